"""ASR through the service vs the same model called directly, same files, same run.

Service path: `POST /v1/audio/transcriptions` with the official openai SDK (upload, decode, resample,
Whisper, JSON). Direct path: `faster_whisper.WhisperModel.transcribe` on the decoded array. Both use the
same CTranslate2 Whisper base int8 weights and greedy decoding. Reports corpus WER of each and the
overhead ratio of total wall time (goal ≤ 1.15).

    python -m bench.asr_service [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

from faster_whisper import WhisperModel

from voxcore.embedded_whisper import whisper_model_dir
from asr.textnorm import word_error_rate
from bench.common import machine, read, start_server, today, transcripts


def run(repeats: int = 2) -> dict:
    rows = transcripts()
    audio_s = sum(len(read(p)) for p, _ in rows) / 16000
    print(f"ASR service vs direct: {len(rows)} recordings, {audio_s:.1f}s of audio, {repeats} repeats", flush=True)
    server = start_server()
    import openai

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=300)
    direct = WhisperModel(str(whisper_model_dir("whisper-base")), device="cpu", compute_type="int8", cpu_threads=2)

    def via_service(path):
        with open(path, "rb") as fh:
            return client.audio.transcriptions.create(model="whisper-base", file=fh, language="en").text

    def via_direct(path):
        segs, _ = direct.transcribe(read(path), language="en", beam_size=1, condition_on_previous_text=False,
                                    vad_filter=False)
        return " ".join(s.text.strip() for s in segs)

    via_service(rows[0][0]), via_direct(rows[0][0])  # warm both paths
    times = {"service": 0.0, "direct": 0.0}
    texts = {"service": [], "direct": []}
    for rep in range(repeats):
        # Alternate the order so neither path always runs on a warmer cache.
        order = (("service", via_service), ("direct", via_direct))
        for name, fn in (order if rep % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            out = [fn(p) for p, _ in rows]
            times[name] += time.perf_counter() - t0
            if rep == 0:
                texts[name] = out
            print(f"  repeat {rep + 1}: {name} {times[name]:.1f}s cumulative", flush=True)
    server.stop()
    refs = [r for _, r in rows]
    result = {
        "audio_s": audio_s, "files": len(rows),
        "wer_service": word_error_rate(refs, texts["service"]), "wer_direct": word_error_rate(refs, texts["direct"]),
        "rtf_service": times["service"] / repeats / audio_s, "rtf_direct": times["direct"] / repeats / audio_s,
    }
    result["overhead"] = result["rtf_service"] / result["rtf_direct"]
    return result


def markdown(r: dict) -> str:
    return (f"### ASR: service vs faster-whisper direct ({today()}, {machine()})\n"
            f"Whisper base, CTranslate2 int8, greedy; {r['files']} real recordings, {r['audio_s']:.1f}s "
            f"(`tests/data`).\n\n"
            f"| path | WER | RTF |\n|---|---|---|\n"
            f"| service (`/v1/audio/transcriptions`, openai SDK) | {r['wer_service']:.2%} | {r['rtf_service']:.3f} |\n"
            f"| faster-whisper called directly | {r['wer_direct']:.2%} | {r['rtf_direct']:.3f} |\n\n"
            f"Overhead ratio service / direct: **{r['overhead']:.3f}** (goal ≤ 1.15).\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(markdown(run(args.repeats)))


if __name__ == "__main__":
    main()
