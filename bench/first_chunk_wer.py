"""Is the first audio chunk of an answer intelligible on its own? (issue 18, build point 4: the "Paris" → "Harris"
lesson.)

The realtime cascade speaks an answer chunk by chunk: the first chunk may end at a comma after
`PipelineOptions.first_clause_chars` characters, later ones at sentence ends (`realtime.pipeline`). A short first
chunk comes out sooner, but a word synthesised alone can be misheard. This takes real answers — the `answer` fields
of a `bench.voice_turn --out` JSON, or a built-in set of the default model's answers — cuts each as the pipeline
does, synthesises every chunk with the service's Piper voice, transcribes it with Whisper (the service's ASR, full
30 s decode, English) and reports the word error rate of the first chunks against that of the whole answers,
synthesised and transcribed the same way in the same run (the baseline).

    .venv/bin/python -m bench.first_chunk_wer --answers artifacts/voice_turn-1.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: answers the default model gave in bench.voice_turn runs (2026-12-04), for a run with no JSON at hand
ANSWERS = (
    "It's Paris.", "There are 7 days in a week.", "The sky on a clear day is blue.", "A spider has 8 legs.",
    "Bees make honey.", "The opposite of hot is cold.", "We live on the planet Earth.", "Spanish is spoken in Spain.",
    "The largest ocean on Earth is the Pacific Ocean.", "An hour has 60 minutes.",
    "William Shakespeare wrote Romeo and Juliet.", "A baby cat is called a kitten.",
    "The sea is salty because rivers carry dissolved minerals, like sodium and chloride, into it.",
    "Sure, I can help with that. What would you like to cook tonight?",
)


def first_chunk(answer: str, first_clause_chars: int) -> str:
    """The answer's first TTS chunk, cut as `realtime.pipeline.CascadeResponse` cuts it (text streamed in)."""
    from tts.text import SentenceChunker

    chunker = SentenceChunker(min_clause_chars=first_clause_chars)
    for word in answer.split(" "):
        ready = chunker.push(word + " ")
        if ready:
            return ready[0]
    return (chunker.flush() or [answer])[0]


def main(argv: list[str] | None = None) -> int:
    from asr.textnorm import normalize, word_error_rate
    from asr.whisper_asr import DecodeOptions, WhisperASR
    from realtime.audio import StreamResampler
    from realtime.pipeline import PipelineOptions
    from tts.piper_tts import PiperTTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", type=Path, help="a bench.voice_turn --out JSON (its streamed answers)")
    ap.add_argument("--first-clause-chars", type=int, default=PipelineOptions().first_clause_chars)
    args = ap.parse_args(argv)
    answers = list(ANSWERS)
    if args.answers:
        turns = json.loads(args.answers.read_text())["turns"]
        answers = sorted({t["answer"] for t in turns if t["pipeline"] == "stream" and t["answer"]})
    t0 = time.perf_counter()
    tts, asr = PiperTTS(), WhisperASR("whisper-base")

    def heard(text: str) -> str:
        pcm = tts.synthesize_all(text)
        pcm = pcm.astype(np.float32) / 32768 if pcm.dtype == np.int16 else pcm.astype(np.float32)
        audio = StreamResampler(tts.sample_rate, 16000)(pcm, last=True)
        return asr.transcribe(np.concatenate([audio, np.zeros(8000, np.float32)]),
                              DecodeOptions(language="en")).text

    firsts = [first_chunk(a, args.first_clause_chars) for a in answers]
    first_heard = [heard(c) for c in firsts]
    whole_heard = [heard(a) for a in answers]
    for c, h in zip(firsts, first_heard):
        if normalize(c) != normalize(h):
            print(f"  first chunk {c!r} heard as {h!r}")
    short = [i for i, (c, a) in enumerate(zip(firsts, answers)) if c != a]
    wer_first = word_error_rate(firsts, first_heard)
    wer_whole = word_error_rate(answers, whole_heard)
    print(f"\n{len(answers)} answers ({len(short)} with a first chunk shorter than the answer); first_clause_chars "
          f"{args.first_clause_chars}; Piper joe → Whisper base")
    print("| what is spoken | round-trip WER |\n|---|---|")
    print(f"| first chunks | {wer_first:.1%} |\n| whole answers (baseline, same run) | {wer_whole:.1%} |")
    if short:
        wer_short = word_error_rate([firsts[i] for i in short], [first_heard[i] for i in short])
        print(f"| first chunks that are shorter than their answer | {wer_short:.1%} |")
    print(f"\n[first_chunk_wer] wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
