"""Small pure parts: text chunking, subtitles, normalisation, VAD segmentation, settings, codecs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from asr.textnorm import normalize, number_to_words
from asr.vad import FRAME, SpeechSegmenter, VADConfig
from asr.whisper_asr import Segment, Transcript
from audio_server.audio_io import SpeechEncoder, StreamResampler, decode_audio, wav_header
from audio_server.settings import Settings
from audio_server.subtitles import to_srt, to_vtt
from tests.conftest import DATA, read_audio
from tts.text import SentenceChunker


def test_chunker_releases_sentences_as_they_complete():
    c = SentenceChunker()
    assert c.push("Hello there") == []
    assert c.push(".") == []  # no whitespace after the stop yet: "there.5" could still follow
    assert c.push(" How are") == ["Hello there."]
    assert c.push(" you? I am") == ["How are you?"]
    assert c.flush() == ["I am"]
    assert c.flush() == []


def test_chunker_keeps_abbreviations_and_decimals():
    c = SentenceChunker()
    assert c.push("Mr. Smith paid 3.50 dollars. Next ") == ["Mr. Smith paid 3.50 dollars."]


def test_chunker_cuts_long_clauses_and_unpunctuated_text():
    c = SentenceChunker(min_clause_chars=40, max_chars=100)
    out = c.push("This sentence goes on for quite a while, and then some more words follow ")
    assert out and out[0].endswith(",")
    c2 = SentenceChunker(max_chars=50)
    out2 = c2.push("word " * 30)
    assert out2 and all(len(x) <= 50 for x in out2)


@given(st.lists(st.text(alphabet="abc .,!?\n", max_size=20), max_size=20))
@hsettings(max_examples=200, deadline=None)
def test_chunker_never_loses_text(pieces):
    c = SentenceChunker(min_clause_chars=10, max_chars=30)
    out = []
    for p in pieces:
        out += c.push(p)
    out += c.flush()
    assert "".join("".join(pieces).split()) == "".join("".join(out).split())


def test_normalize_and_numbers():
    assert number_to_words(47) == "forty seven" and number_to_words(300) == "three hundred"
    assert normalize("Mr. Smith's 10 ill-disposed cats!") == "mister smith's ten ill disposed cats"


def test_subtitles():
    t = Transcript("a b", "en", 3.0, (Segment(0, 0.0, 1.5, "a"), Segment(1, 1.5, 3661.25, "b")))
    assert to_srt(t) == "1\n00:00:00,000 --> 00:00:01,500\na\n\n2\n00:00:01,500 --> 01:01:01,250\nb\n"
    assert to_vtt(t).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\na\n")


def test_segmenter_hysteresis():
    seg = SpeechSegmenter(VADConfig(threshold=0.5, silence_duration_ms=96, prefix_padding_ms=0, min_speech_ms=64))
    probs = np.array([0.1, 0.9, 0.2, 0.9, 0.9, 0.9, 0.45, 0.1, 0.1, 0.1, 0.1])
    events = seg.push(probs)
    # A single loud frame does not open a segment; 0.45 (above threshold-0.15) keeps it open.
    assert [(e.kind, round(e.time / (FRAME / 16000))) for e in events] == [("start", 3), ("end", 7)]


def test_vad_finds_speech_in_a_real_recording(hub):
    audio, _ = read_audio(DATA / "commands" / "goforward.wav")
    stream = hub.vad().stream()
    seg = SpeechSegmenter(VADConfig(prefix_padding_ms=0))
    padded = np.concatenate([np.zeros(16000, np.float32), audio, np.zeros(16000, np.float32)])
    events = []
    for i in range(0, len(padded), 333):  # odd chunk sizes: the stream buffers partial frames
        events += seg.push(stream.feed(padded[i : i + 333]))
    assert [e.kind for e in events] == ["start", "end"]
    assert 1.0 <= events[0].time <= 1.0 + 1.2 and events[1].time <= 1.0 + len(audio) / 16000 + 0.1


def test_settings_validation_and_env(monkeypatch):
    with pytest.raises(ValueError, match="preset"):
        Settings(preset="huge")
    monkeypatch.setenv("VOXLINE_PORT", "9001")
    monkeypatch.setenv("VOXLINE_API_KEYS", "a,b")
    s = Settings.from_env(host="0.0.0.0")
    assert s.port == 9001 and s.api_keys == ("a", "b") and s.host == "0.0.0.0"


def test_streaming_resampler_matches_length():
    rs = StreamResampler(22050, 16000)
    x = np.random.default_rng(1).standard_normal(22050).astype(np.float32)
    out = np.concatenate([rs(x[i : i + 1000]) for i in range(0, len(x), 1000)] + [rs(x[:0], last=True)])
    assert abs(len(out) - 16000) <= 1


def test_streaming_wav_header_decodes():
    pcm = (np.sin(np.arange(16000) / 5) * 9000).astype(np.int16)
    data = wav_header(16000) + pcm.tobytes()
    assert len(decode_audio(data, 16000)) == 16000
    enc = SpeechEncoder("wav", 16000)
    assert enc.encode(pcm[:8000]).startswith(b"RIFF") and not enc.encode(pcm[8000:]).startswith(b"RIFF")
