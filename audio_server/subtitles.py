"""Transcript renderers for `response_format`: json, text, verbose_json, srt, vtt."""

from __future__ import annotations

from asr.whisper_asr import Transcript


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(t: Transcript) -> str:
    blocks = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
              for i, s in enumerate(t.segments, start=1)]
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_verbose_json(t: Transcript, words: bool, segments: bool = True) -> dict:
    body: dict = {"task": "transcribe", "language": t.language, "duration": round(t.duration, 3), "text": t.text}
    if segments:
        body["segments"] = [
            {"id": s.id, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
             "tokens": [], "temperature": 0.0, "avg_logprob": s.avg_logprob, "compression_ratio": 0.0,
             "no_speech_prob": s.no_speech_prob}
            for s in t.segments
        ]
    if words:
        body["words"] = [{"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
                         for s in t.segments for w in s.words]
    return body
