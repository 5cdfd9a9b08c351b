"""One-utterance decoding in a short window (streaming finals, realtime turns): the quality of the 30 s
window on real speech, and the full window whenever the short one cannot be trusted."""

from __future__ import annotations

import numpy as np

from asr.textnorm import normalize, word_error_rate
from asr.vad import SileroVAD, SpeechSegmenter, VADConfig
from asr.whisper_asr import UTTERANCE_MIN_PADDING_S, WINDOW_FRAMES, DecodeOptions
from tests.conftest import load_transcripts, read_audio

RATE = 16000
FULL = DecodeOptions(language="en", timestamps=False)


def utterances(audio: np.ndarray) -> list[np.ndarray]:
    """Cut a recording where the streaming server would: Silero VAD, 400 ms of silence ends a segment."""
    config = VADConfig(silence_duration_ms=400)
    events = SpeechSegmenter(config).push(SileroVAD.shared().stream().feed(
        np.concatenate([audio, np.zeros(RATE, np.float32)])))
    starts = [e.time for e in events if e.kind == "start"]
    ends = [e.time for e in events if e.kind == "end"]
    pad = config.prefix_padding_ms / 1000
    return [audio[int(max(0.0, s - pad) * RATE) : int(e * RATE)] for s, e in zip(starts, ends)]


def test_short_window_keeps_whisper_base_quality_on_real_speech(hub):
    asr = hub.asr("whisper-base")
    fallbacks = asr.utterance_fallbacks
    refs, short_hyps, full_hyps, same, total = [], [], [], 0, 0
    for path, ref in load_transcripts():
        audio, rate = read_audio(path)
        assert rate == RATE
        # Long recordings reach the service as utterances, as a streaming client's would.
        pieces = [audio] if len(audio) < 10 * RATE else utterances(audio)
        assert pieces
        short = [asr.transcribe_utterance(p, "en") for p in pieces]
        full = [asr.transcribe(p, FULL).text for p in pieces]
        for s, f in zip(short, full):
            total += 1
            same += normalize(s) == normalize(f)
            if normalize(s) != normalize(f):
                print(f"  {path.name}: short window {s!r} / 30 s {f!r}")
        refs.append(ref)
        short_hyps.append(" ".join(short))
        full_hyps.append(" ".join(full))
    wer_short, wer_full = word_error_rate(refs, short_hyps), word_error_rate(refs, full_hyps)
    print(f"\n{total} utterances: short window WER {wer_short:.2%}, 30 s window WER {wer_full:.2%}, "
          f"identical text {same}/{total}")
    assert total >= 20
    # Within two words (of 227) of the 30 s window; which words differ moves with the window size.
    assert wer_short <= wer_full + 0.01
    assert same >= 0.85 * total
    assert asr.utterance_fallbacks == fallbacks  # real speech never needed the 30 s path


def test_long_utterance_and_repetition_loops_take_the_full_window(hub, monkeypatch):
    asr = hub.asr("whisper-base")
    audio, _ = read_audio(load_transcripts()[0][0])  # 7 s of real speech
    calls = []
    real_transcribe = asr.transcribe

    def spy(audio, options=DecodeOptions()):
        calls.append(len(audio) / RATE)
        return real_transcribe(audio, options)

    monkeypatch.setattr(asr, "transcribe", spy)
    text = asr.transcribe_utterance(audio, "en")
    assert calls == [] and "dashwood" in normalize(text)

    # Too long to leave the minimum silence padding inside the short window.
    limit = asr.utterance_frames / 100 - UTTERANCE_MIN_PADDING_S
    long_audio = np.concatenate([audio, audio, audio])[: int((limit + 1) * RATE)]
    asr.transcribe_utterance(long_audio, "en")
    assert calls == [len(long_audio) / RATE]

    # A looping text (high compression ratio) is decoded again in 30 s.
    import faster_whisper.transcribe as fw

    monkeypatch.setattr(fw, "get_compression_ratio", lambda text: 10.0)
    before = asr.utterance_fallbacks
    again = asr.transcribe_utterance(audio, "en")
    assert len(calls) == 2 and asr.utterance_fallbacks == before + 1
    assert normalize(again) == normalize(real_transcribe(audio, FULL).text)

    # VOXLINE_ASR_UTTERANCE_WINDOW_S=30: every utterance is faster-whisper's own 30 s decode.
    monkeypatch.setattr(asr, "utterance_frames", WINDOW_FRAMES)
    asr.transcribe_utterance(audio[: 2 * RATE], "en")
    assert len(calls) == 3


def test_silence_and_noise_give_no_text(hub):
    asr = hub.asr("whisper-base")
    noise = (np.random.default_rng(0).standard_normal(3 * RATE) * 0.01).astype(np.float32)
    assert asr.transcribe_utterance(np.zeros(2 * RATE, np.float32), "en") == ""
    assert asr.transcribe_utterance(noise, "en") == ""
    assert asr.transcribe_utterance(np.zeros(800, np.float32), "en") == ""  # 50 ms: too short to decode
