"""Load memory of a Step-Audio 2 checkpoint: peak RSS of load_step_audio2 against the bytes on disk (issue 17).

Writes a ~1B-parameter random checkpoint shaped like Step-Audio 2 mini (vocabulary 158720, untied head, Qwen2
blocks, a small Whisper-style encoder and the adapter) in bf16 shards in the official layout, shard by shard so
the writer itself stays small (runtime.step_audio2.checkpoint.write_shards), then loads it with
``load_step_audio2(dir, dtype=bfloat16)`` in a fresh subprocess. The child reports ``ru_maxrss`` before the load,
right after it, and after touching one element of every 4 KiB page of every parameter (the weights resident, as
the first forward makes them). Acceptance: the peak minus the child's RSS before the load is at most 1.2x the
bytes on disk (the meta build means no random fp32 copy of the model ever exists).

    .venv/bin/python -m bench.step_audio2_load                  # ~1.03B parameters, ~2.1 GB on disk
    .venv/bin/python -m bench.step_audio2_load --layers 2       # smaller, quicker
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT = 1.2
PAGE_ELEMENTS = 2048      # bf16 elements per 4 KiB page


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux reports KiB


def _rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_config(hidden: int, layers: int, ffn: int, heads: int, kv_heads: int, enc_width: int, enc_layers: int):
    from runtime.step_audio2.config import AudioEncoderConfig, StepAudio2Config, lm_config_from_qwen2

    lm = lm_config_from_qwen2({"vocab_size": 158720, "hidden_size": hidden, "intermediate_size": ffn,
                               "num_hidden_layers": layers, "num_attention_heads": heads,
                               "num_key_value_heads": kv_heads, "max_position_embeddings": 16384})
    audio = AudioEncoderConfig(n_mels=128, n_audio_ctx=1500, n_audio_state=enc_width,
                               n_audio_head=max(1, enc_width // 64), n_audio_layer=enc_layers, llm_dim=hidden)
    return StepAudio2Config(lm=lm, audio=audio)


def child(directory: str) -> int:
    """Runs in the fresh process: load, touch, report JSON on stdout."""
    import torch

    from runtime.step_audio2.checkpoint import load_step_audio2

    torch.set_num_threads(1)
    before_max, before_rss = _maxrss_bytes(), _rss_bytes()
    t0 = time.perf_counter()
    model = load_step_audio2(directory, dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    after_load = _maxrss_bytes()
    checksum = 0.0
    for p in model.parameters():
        checksum += float(p.detach().reshape(-1)[::PAGE_ELEMENTS].float().sum())
    after_touch = _maxrss_bytes()
    params = list(model.parameters())
    print(json.dumps({
        "maxrss_before": before_max, "rss_before": before_rss, "maxrss_after_load": after_load,
        "maxrss_after_touch": after_touch, "rss_after_touch": _rss_bytes(), "load_s": load_s,
        "n_params": sum(p.numel() for p in params), "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "dtypes": sorted({str(p.dtype) for p in params}), "on_meta": sum(p.device.type == "meta" for p in params),
        "checksum_finite": checksum == checksum,
    }))
    return 0


def writer(directory: str, args) -> int:
    """Runs in its own process: the random checkpoint, shard by shard; reports JSON on stdout."""
    import torch

    from runtime.step_audio2.checkpoint import model_shapes, random_tensor, write_shards

    torch.set_num_threads(1)
    cfg = bench_config(args.hidden, args.layers, args.ffn, args.heads, args.kv_heads, args.enc_width,
                       args.enc_layers)
    t0 = time.perf_counter()
    files = write_shards(directory, cfg, model_shapes(cfg), random_tensor(seed=0), torch.bfloat16,
                         max_shard_bytes=args.shard_mb * 1024 ** 2)
    print(json.dumps({"files": len(files), "on_disk": sum(f.stat().st_size for f in files),
                      "write_s": time.perf_counter() - t0, "writer_peak": _maxrss_bytes()}))
    return 0


def _run_json(extra: list[str]) -> dict | None:
    proc = subprocess.run([sys.executable, "-m", "bench.step_audio2_load", *extra], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode:
        print(proc.stdout + proc.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.step_audio2_load", description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--enc-width", type=int, default=512)
    ap.add_argument("--enc-layers", type=int, default=4)
    ap.add_argument("--shard-mb", type=int, default=1024, help="max shard size (a bigger tensor gets its own)")
    ap.add_argument("--dir", default=None, help="write here and keep it (default: a temp dir, removed)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--write", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)
    if args.write:
        return writer(args.write, args)

    from bench.common import machine

    with tempfile.TemporaryDirectory(prefix="sa2_load_") as tmp:
        directory = str(Path(args.dir or tmp))
        # Writer and loader each in a fresh process started from this one, which never imports torch: Linux
        # carries ru_maxrss across fork/exec, so the loader's figure must not start from a big parent's peak.
        sizes = [f"--{k}={v}" for k, v in (("hidden", args.hidden), ("layers", args.layers), ("ffn", args.ffn),
                                          ("heads", args.heads), ("kv-heads", args.kv_heads),
                                          ("enc-width", args.enc_width), ("enc-layers", args.enc_layers),
                                          ("shard-mb", args.shard_mb))]
        w = _run_json(["--write", directory, *sizes])
        r = _run_json(["--child", directory])
    if w is None or r is None:
        return 1
    files, on_disk, write_s, writer_peak = w["files"], w["on_disk"], w["write_s"], w["writer_peak"]
    gib = 1024 ** 3
    delta_load = r["maxrss_after_load"] - r["rss_before"]
    delta = r["maxrss_after_touch"] - r["rss_before"]
    ratio = delta / on_disk
    ok = ratio <= LIMIT and r["dtypes"] == ["torch.bfloat16"] and r["on_meta"] == 0
    print(f"machine: {machine()}")
    print(f"checkpoint: {r['n_params'] / 1e9:.3f}B params (hidden {args.hidden}, {args.layers} layers, vocab 158720, "
          f"encoder {args.enc_width}x{args.enc_layers}), {files} bf16 shards (max {args.shard_mb} MiB), "
          f"{on_disk / gib:.3f} GiB on disk ({on_disk} bytes); written in {write_s:.1f} s, writer peak RSS "
          f"{writer_peak / gib:.3f} GiB")
    print(f"load_step_audio2: {r['load_s']:.2f} s; dtypes {r['dtypes']}, {r['on_meta']} params on meta")
    print(f"child RSS before load {r['rss_before'] / gib:.3f} GiB (ru_maxrss {r['maxrss_before'] / gib:.3f} GiB)")
    print(f"peak RSS right after load: {r['maxrss_after_load'] / gib:.3f} GiB absolute, +{delta_load / gib:.3f} GiB")
    print(f"peak RSS with every weight page resident: {r['maxrss_after_touch'] / gib:.3f} GiB absolute, "
          f"+{delta / gib:.3f} GiB over the pre-load RSS")
    print(f"ratio (peak - pre-load) / bytes on disk = {ratio:.3f} (absolute peak / bytes on disk = "
          f"{r['maxrss_after_touch'] / on_disk:.3f}); limit {LIMIT}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
