"""Speech quality of the embedded models on real recordings (acceptance thresholds of the foundation issue)."""

from __future__ import annotations

from asr.textnorm import normalize, word_error_rate
from asr.whisper_asr import DecodeOptions
from audio_server.audio_io import decode_audio
from tests.conftest import load_transcripts, read_audio

# Ten fixed sentences for the TTS round trip: everyday assistant replies, numbers, a question.
ROUND_TRIP_SENTENCES = [
    "The weather today is sunny with a light breeze.",
    "Please remind me to call my sister at six o'clock.",
    "The capital of France is Paris.",
    "Turn left at the next intersection and continue for two miles.",
    "Your package will arrive on Thursday afternoon.",
    "Can you play some relaxing music in the kitchen?",
    "The meeting has been moved to next Monday morning.",
    "I found three restaurants near you that are open now.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Thank you for calling, have a wonderful evening.",
]


def test_whisper_base_wer_on_real_speech(hub):
    asr = hub.asr("whisper-base")
    rows = load_transcripts()
    refs, hyps = [], []
    for path, ref in rows:
        audio, rate = read_audio(path)
        assert rate == 16000
        hyps.append(asr.transcribe(audio, DecodeOptions(language="en")).text)
        refs.append(ref)
    wer = word_error_rate(refs, hyps)
    words = sum(len(normalize(r).split()) for r in refs)
    print(f"\nWhisper base WER on {len(rows)} real recordings ({words} words): {wer:.2%}")
    for r, h in zip(refs, hyps):
        if normalize(r) != normalize(h):
            print(f"  ref: {normalize(r)}\n  hyp: {normalize(h)}")
    assert wer <= 0.04


def test_tts_round_trip_is_intelligible(openai_client, hub):
    asr = hub.asr("whisper-base")
    hyps = []
    for sentence in ROUND_TRIP_SENTENCES:
        wav = openai_client.audio.speech.create(model="tts-1", voice="alloy", input=sentence,
                                                response_format="wav").read()
        hyps.append(asr.transcribe(decode_audio(wav, 16000), DecodeOptions(language="en")).text)
    wer = word_error_rate(ROUND_TRIP_SENTENCES, hyps)
    print(f"\nTTS round-trip WER over {len(hyps)} sentences: {wer:.2%}")
    for r, h in zip(ROUND_TRIP_SENTENCES, hyps):
        if normalize(r) != normalize(h):
            print(f"  ref: {normalize(r)}\n  hyp: {normalize(h)}")
    assert wer <= 0.12
