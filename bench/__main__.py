"""Run every benchmark in turn: `python -m bench` (or `make bench`). Each prints a RESULTS.md section."""

from __future__ import annotations

import importlib
import sys

BENCHES = ["bench.asr_service", "bench.streaming_asr", "bench.tts_service", "bench.mtp", "bench.tokenizer_vocoder",
           "bench.llm", "bench.realtime", "bench.pipeline", "bench.whisper_mtp", "bench.security_probe"]


def main() -> int:
    only = set(sys.argv[1:])
    for name in BENCHES:
        if only and name.split(".")[-1] not in only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            print(f"== {name}: not available ({exc})")
            continue
        print(f"== {name}", flush=True)
        module.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
