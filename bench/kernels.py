"""Triton kernels vs torch on a CUDA GPU: per-kernel time and bandwidth roofline, and the decode step.

Per kernel: Triton vs the torch baseline (eager and torch.compile); then the greedy MTP verify step
of the ``tiny`` and a Qwen2.5-0.5B-sized model with and without the kernels.

    .venv/bin/python -m bench.kernels                # everything (torch.compile included), a few minutes
    .venv/bin/python -m bench.kernels --quick        # fewer cases, no torch.compile
    .venv/bin/python -m bench.kernels --out DIR      # also write DIR/kernels.md and DIR/kernels.json
    .venv/bin/python -m bench.kernels --no-step --only decode_attention,sample   # a subset

Needs CUDA and Triton; elsewhere it says so and exits 0. Method (``.library/device/METHOD.md``):
each kernel is checked against its reference first; times are CUDA-event medians per call after a
warm-up, over input sets rotated so that together they exceed twice the L2 cache (repeated runs on
one small buffer would time the cache). "min bytes" counts each input read once and each output
written once; GB/s and "% of peak" divide that by the measured time (peak: datasheet HBM bandwidth
for the detected GPU, and a measured device-to-device copy for comparison). Decode-step models have
random weights: speed only, never speech quality.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

DEVICE = "cuda"  # the only device this benchmark times on (a CPU dry run of its plumbing patches it)

# Datasheet HBM bandwidth by device-name fragment (first match wins; order matters).
PEAK_BW = (("H200", 4.8e12, "H200 141 GB HBM3e"), ("H100 NVL", 3.9e12, "H100 NVL"),
           ("H100 PCIe", 2.0e12, "H100 PCIe"), ("H100", 3.35e12, "H100 SXM HBM3"),
           ("A100", 2.0e12, "A100 80 GB"), ("L40S", 0.864e12, "L40S"))


def peak_bandwidth(name: str) -> tuple[float | None, str]:
    for frag, bw, label in PEAK_BW:
        if frag in name:
            return bw, label
    return None, "unknown GPU (no datasheet figure)"


def time_us(fn: Callable[[int], Any], n_sets: int, iters: int, warmup: int = 10) -> float:
    """Median µs per call of ``fn(set_index)``, CUDA events around each call."""
    for i in range(warmup):
        fn(i % n_sets)
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for i, (s, e) in enumerate(ev):
        s.record()
        fn(i % n_sets)
        e.record()
    torch.cuda.synchronize()
    return 1000.0 * statistics.median(s.elapsed_time(e) for s, e in ev)


def copy_bandwidth() -> float:
    """Measured device-to-device copy, bytes read + written per second (1 GiB buffers)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE).random_()
    b = torch.empty_like(a)
    us = time_us(lambda i: b.copy_(a), 1, 20, 3)
    return 2 * (1 << 30) / (us * 1e-6)


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _rel_err(a, b) -> float:
    if isinstance(a, tuple):
        return max(_rel_err(x, y) for x, y in zip(a, b))
    if not a.is_floating_point():
        return float((a != b).float().mean())   # fraction of differing ids
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@dataclass
class Case:
    kernel: str
    label: str
    make: Callable[[], tuple]            # one input set
    triton: Callable[..., Any]
    eager: Callable[..., Any]            # the torch baseline (the runtime's way where one exists)
    eager_name: str
    bytes: Callable[[tuple], int]
    extra: dict[str, Callable[..., Any]] = field(default_factory=dict)


def kernel_cases(quick: bool, dtype: torch.dtype) -> list[Case]:
    from kernels import ops, reference

    dev = DEVICE
    cases: list[Case] = []

    def rn(*shape, dt=dtype):
        return torch.randn(shape, device=dev, dtype=torch.float32).to(dt)

    # RMSNorm with the residual add, 0.5B decode rows (8 slots x 4 tokens) and a prefill-sized tensor.
    for rows, d in ([(32, 896), (16384, 4096)] if not quick else [(32, 896)]):
        cases.append(Case(
            "add_rms_norm", f"[{rows}, {d}]", lambda rows=rows, d=d: (rn(rows, d), rn(rows, d), rn(d)),
            lambda x, r, w: ops.add_rms_norm(x, r, w, 1e-6, backend="triton"),
            lambda x, r, w: reference.add_rms_norm(x, r, w, 1e-6), "reference",
            lambda a: 3 * _nbytes(a[0]) + _nbytes(a[1], a[2])))
    # RoPE on q, k + KV-cache write (0.5B decode; an 8B-like prefill chunk).
    rope_shapes = [(8, 4, 14, 2, 64, 2048)] + ([] if quick else [(16, 256, 32, 8, 128, 4096)])
    for b, t, h, hk, dh, s in rope_shapes:
        def make(b=b, t=t, h=h, hk=hk, dh=dh, s=s):
            ang = torch.rand(s, dh, device=dev) * 6.28
            pos = (torch.randint(0, s - t, (b, 1), device=dev) + torch.arange(t, device=dev))
            return (rn(b, t, h, dh).transpose(1, 2), rn(b, t, hk, dh).transpose(1, 2),
                    rn(b, t, hk, dh).transpose(1, 2), pos, ang.cos(), ang.sin(), rn(b, hk, s, dh), rn(b, hk, s, dh))
        cases.append(Case(
            "rotary_qk_cache", f"B{b} T{t} H{h}/{hk} Dh{dh}", make,
            lambda q, k, v, p, c, s_, kc, vc: ops.rotary_qk_cache(q, k, p, c, s_, v, kc, vc, backend="triton"),
            lambda q, k, v, p, c, s_, kc, vc: reference.rotary_qk_cache(q, k, v, p, c, s_, kc, vc), "reference",
            lambda a: 2 * _nbytes(a[0]) + 3 * _nbytes(a[1]) + 2 * _nbytes(a[2]) + _nbytes(a[3])
            + 2 * a[3].numel() * a[4].shape[1] * 4))

    # Attention over the cache: baseline is the runtime's SDPA with a position mask over all of S.
    def sdpa(q, kc, vc, pos, mask):
        return F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)

    attn_shapes = [(1, 14, 2, 4, 64, 4096, 4000), (8, 14, 2, 4, 64, 4096, 4000), (8, 14, 2, 4, 64, 4096, 1000),
                   (32, 32, 8, 4, 128, 4096, 2000)]
    for b, h, hk, t, dh, s, n in attn_shapes[:2] if quick else attn_shapes:
        def make(b=b, h=h, hk=hk, t=t, dh=dh, s=s, n=n):
            pos = torch.full((b, 1), n, device=dev) + torch.arange(t, device=dev)
            mask = torch.arange(s, device=dev)[None, None, None, :] <= pos[:, None, :, None]
            return rn(b, t, h, dh).transpose(1, 2), rn(b, hk, s, dh), rn(b, hk, s, dh), pos, mask
        cases.append(Case(
            "decode_attention", f"B{b} H{h}/{hk} T{t} Dh{dh} n{n}/S{s}", make,
            lambda q, kc, vc, p, m: ops.decode_attention(q, kc, vc, p, backend="triton"),
            sdpa, "SDPA+mask (runtime)",
            lambda a, n=n, t=t: 2 * _nbytes(a[0]) + 2 * a[1].shape[0] * a[1].shape[1] * (n + t) * a[1].shape[3]
            * a[1].element_size(),
            extra={"reference": lambda q, kc, vc, p, m: reference.decode_attention(q, kc, vc, p)}))

    # Sampling over a Qwen-sized vocabulary: temperature + top-k 50 + top-p 0.9, and top-p alone.
    for label, tk, tp in [("T0.8 top-k 50 top-p 0.9", 50, 0.9), ("T0.8 top-p 0.9", 0, 0.9)][: 1 if quick else 2]:
        def make(tk=tk, tp=tp, b=8, v=151936):
            return (rn(b, v) * 3, torch.full((b,), 0.8, device=dev), torch.full((b,), tk, device=dev),
                    torch.full((b,), tp, device=dev), torch.rand(b, device=dev))
        cases.append(Case(
            "sample", f"[8, 151936] {label}", make,
            lambda lg, t, k, p, u: ops.sample(lg, t, k, p, u, backend="triton"),
            lambda lg, t, k, p, u: reference.sample(lg, t, k, p, u), "reference (sorts)",
            lambda a: _nbytes(a[0]) + 8 * a[0].shape[0]))

    def make_accept(b=8, k1=4, v=151936, s=4096):
        return (rn(b, k1, v), torch.randint(0, v, (b, s), device=dev),
                torch.full((b,), 1000, device=dev, dtype=torch.long), torch.ones(b, dtype=torch.bool, device=dev))
    cases.append(Case(
        "mtp_accept", "[8, 4, 151936]", make_accept,
        lambda lg, tok, ln, act: ops.mtp_accept(lg, tok, ln, act, backend="triton"),
        lambda lg, tok, ln, act: reference.mtp_accept(lg, tok, ln, act), "reference",
        lambda a: _nbytes(a[0]) + 8 * 4 * a[0].shape[0] * 3))

    # HiFi-GAN resblock conv of one 120 ms chunk (8 sessions), and a long offline pass.
    conv_shapes = [(8, 256, 96, 3, 3), (8, 512, 4096, 7, 1)]
    for b, c, t, k, d in conv_shapes[:1] if quick else conv_shapes:
        def make(b=b, c=c, t=t, k=k, d=d):
            return (rn(b, c, t), rn(b, c, (k - 1) * d), rn(c, c, k) / math.sqrt(c * k), rn(c), rn(b, c, t))
        cases.append(Case(
            "causal_conv1d", f"B{b} C{c} T{t} k{k} d{d}", make,
            lambda x, hs, w, bi, r, d=d: ops.causal_conv1d(x, hs, w, bi, 1, d, 0.1, r, backend="triton"),
            lambda x, hs, w, bi, r, d=d: reference.causal_conv1d(x, hs, w, bi, 1, d, 0.1, r), "reference",
            lambda a: 2 * _nbytes(a[0]) + 2 * _nbytes(a[1]) + _nbytes(a[2], a[3], a[4])))
    return cases


def run_case(case: Case, compile_: bool, iters: int, l2_bytes: int, peak: float | None) -> dict:
    first = case.make()
    per_set = case.bytes(first)
    n_sets = max(1, min(64, math.ceil(2 * l2_bytes / max(per_set, 1))))
    sets = [first] + [case.make() for _ in range(n_sets - 1)]
    ref_args = case.make()
    # Correctness first, on fresh copies (some ops update their inputs in place).
    err = _rel_err(case.triton(*[a.clone() for a in ref_args]),
                   case.eager(*[a.clone() for a in ref_args]) if case.eager_name == "reference"
                   else case.extra.get("reference", case.eager)(*[a.clone() for a in ref_args]))
    row = {"kernel": case.kernel, "case": case.label, "dtype": str(first[0].dtype).replace("torch.", ""),
           "bytes": per_set, "err_vs_ref": err, "baseline": case.eager_name, "input_sets": n_sets}
    row["triton_us"] = time_us(lambda i: case.triton(*sets[i]), n_sets, iters)
    row["eager_us"] = time_us(lambda i: case.eager(*sets[i]), n_sets, iters)
    # GPU time alone: the same calls replayed from a CUDA graph, so host launch cost is not counted.
    row["triton_graph_us"] = graph_us_per_call(lambda i: case.triton(*sets[i]), n_sets, iters)
    row["eager_graph_us"] = graph_us_per_call(lambda i: case.eager(*sets[i]), n_sets, iters)
    for name, fn in case.extra.items():
        row[f"{name}_us"] = time_us(lambda i, fn=fn: fn(*sets[i]), n_sets, iters)
    row["compile_us"] = None
    if compile_:
        try:
            compiled = torch.compile(case.eager, dynamic=False)
            row["compile_us"] = time_us(lambda i: compiled(*sets[i]), n_sets, iters, warmup=5)
        except Exception as exc:  # report, don't stop the run
            row["compile_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    best = min(v for v in (row["triton_us"], row["triton_graph_us"]) if v)
    row["gbps"] = per_set / (best * 1e-6) / 1e9
    row["pct_peak"] = None if peak is None else 100 * per_set / (best * 1e-6) / peak
    return row


def graph_us_per_call(fn: Callable[[int], Any], n_sets: int, iters: int) -> float | None:
    """Median µs per call when one CUDA graph replays ``fn(0) .. fn(n_sets - 1)``: GPU time with the
    host's launch cost removed. None when the call cannot be captured (it syncs with the host)."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(n_sets):
                fn(i)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(n_sets):
                fn(i)
        return time_us(lambda i: graph.replay(), 1, max(10, iters // 4), warmup=3) / n_sets
    except Exception:  # noqa: BLE001 - a host sync inside fn: no graph figure for it
        torch.cuda.synchronize()
        return None


# ------------------------------------------------------------------------------------ decode step
def qwen25_05b_config(max_seq_len: int = 4096):
    """Qwen2.5-0.5B sizes (494M parameters, tied embeddings) in our LMConfig, no MTP modules."""
    from runtime.config import LMConfig

    return LMConfig(vocab_size=151936, text_vocab_size=146816, audio_offset=146816, d_model=896, n_layers=24,
                    n_heads=14, n_kv_heads=2, head_dim=64, ffn_dim=4864, rope_theta=1e6, tie_embeddings=True,
                    max_seq_len=max_seq_len, n_mtp=0)


def step_bytes(model, batch: int, t: int, context: int) -> int:
    """Fewest bytes one verify step moves: every weight once (embedding: the used rows only, unless
    tied to the output head), the KV cache up to the context (read) and the new entries (write), the
    logits written and read back."""
    cfg = model.config
    elt = next(model.parameters()).element_size()
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or name.startswith("mtp."):
            continue
        seen.add(id(p))
        total += (batch * t * p.shape[1] if name.endswith("embed_tokens.weight") and not cfg.tie_embeddings
                  else p.numel()) * elt
    kv = cfg.n_layers * batch * cfg.n_kv_heads * cfg.head_dim * 2 * elt
    return total + kv * (context + t) + kv * t + 2 * batch * t * cfg.vocab_size * elt


def decode_rows(quick: bool, dtype: torch.dtype, iters: int, peak: float | None, log,
                profile: bool = False) -> list[dict]:
    from kernels.decode_step import pack_projections, verify_step
    from runtime.model import build_model
    from runtime.presets import tiny_config
    from runtime.state import DecodeState
    from voxcore.verify import GreedyVerifier

    k, cap, n = 3, 2048, 1000
    rows = []
    configs = [("tiny", tiny_config(max_seq_len=cap, n_mtp=0)), ("Qwen2.5-0.5B-sized", qwen25_05b_config(cap))]
    for name, cfg in configs:
        log(f"[bench.kernels] building {name} ({dtype}) on the GPU")
        model = build_model(cfg, seed=0, init_std=0.02, dtype=dtype, device=DEVICE)
        packed = pack_projections(model)
        for batch in ([1] if quick else [1, 8]):
            st = DecodeState.allocate(model, batch, cap, 0)
            st.kv.k.normal_()
            st.kv.v.normal_()
            st.tokens.random_(0, cfg.vocab_size)
            start = torch.full((batch,), n, dtype=torch.long, device=DEVICE)
            kc, vc = st.kv.k.clone(), st.kv.v.clone()
            tokens, lengths = st.tokens.clone(), start.clone()
            offs = torch.arange(k + 1, device=DEVICE)

            def runtime_step():
                st.lengths.copy_(start)
                m = st.lengths.clone()
                vpos = (m[:, None] + offs).clamp(max=cap - 1)
                vtok = st.tokens.gather(1, vpos)
                logits = model.logits(model(vtok, vpos, st.kv))
                n_acc, nxt = GreedyVerifier()(logits, vtok[:, 1:], None, None)
                bpos = (m + n_acc + 1).clamp(max=cap - 1)[:, None]
                st.tokens.scatter_(1, bpos, nxt[:, None])
                st.lengths.copy_(m + n_acc + 1)

            def kernel_step():
                lengths.copy_(start)
                verify_step(model, tokens, lengths, kc, vc, k, backend="triton")

            def packed_step():
                lengths.copy_(start)
                verify_step(model, tokens, lengths, kc, vc, k, backend="triton", packed=packed)

            row = {"config": name, "slots": batch, "tokens_per_slot": k + 1, "context": n,
                   "bytes": step_bytes(model, batch, k + 1, n)}
            with torch.no_grad():
                row["runtime_eager_ms"] = time_us(lambda i: runtime_step(), 1, iters) / 1000
                row["kernels_eager_ms"] = time_us(lambda i: kernel_step(), 1, iters) / 1000
                for key, fn in (("runtime_graph_ms", runtime_step), ("kernels_graph_ms", kernel_step),
                                ("packed_graph_ms", packed_step)):
                    try:
                        row[key] = graph_ms(fn, iters)
                    except Exception as exc:
                        row[key] = None
                        row[key.replace("_ms", "_error")] = f"{type(exc).__name__}: {str(exc)[:120]}"
            best = min(v for v in (row["kernels_eager_ms"], row.get("kernels_graph_ms"),
                                   row.get("packed_graph_ms")) if v)
            row["pct_peak_kernels"] = None if peak is None else 100 * row["bytes"] / (best * 1e-3) / peak
            best_rt = min(v for v in (row["runtime_eager_ms"], row.get("runtime_graph_ms")) if v)
            row["pct_peak_runtime"] = None if peak is None else 100 * row["bytes"] / (best_rt * 1e-3) / peak
            rows.append(row)
            log(f"[bench.kernels]   {name} B{batch}: runtime {best_rt:.3f} ms, kernels {best:.3f} ms")
            if profile and batch == 1:
                for label, fn in (("kernels, packed projections", packed_step), ("runtime", runtime_step)):
                    log(f"[bench.kernels] GPU time by kernel, {name} B1 verify step ({label}), 20 steps:")
                    log(profile_table(fn, 20))
        # Drop this model's weights before the next one is built (the step closures hold the same cells).
        model = packed = None
        torch.cuda.empty_cache()
    return rows


def profile_table(fn: Callable[[], None], steps: int, rows: int = 14) -> str:
    """torch.profiler's GPU time per kernel name over ``steps`` calls: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)


def graph_ms(fn: Callable[[], None], iters: int) -> float:
    """Median ms of one replay of ``fn`` captured in a CUDA graph (removes launch gaps)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_us(lambda i: graph.replay(), 1, iters) / 1000


# ----------------------------------------------------------------------------------------- output
def _f(v, fmt="{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def markdown(env: dict, krows: list[dict], drows: list[dict]) -> str:
    out = [f"Device: {env['device']} ({env['peak_label']}, datasheet {_f(env['peak_tbps'], '{:.2f}')} TB/s; "
           f"measured copy {env['copy_tbps']:.2f} TB/s); torch {env['torch']}, triton {env['triton']}; "
           f"{env['dtype']}; CUDA-event medians of {env['iters']} calls.", "",
           "| kernel | case | baseline | min bytes | Triton µs | eager µs | compile µs | × eager | × compile "
           "| Triton graph µs | eager graph µs | × eager (graph) | Triton GB/s | % peak | rel err |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in krows:
        xe = r["eager_us"] / r["triton_us"]
        xc = None if r["compile_us"] is None else r["compile_us"] / r["triton_us"]
        tg, eg = r.get("triton_graph_us"), r.get("eager_graph_us")
        xg = None if not (tg and eg) else eg / tg
        out.append(f"| {r['kernel']} | {r['case']} | {r['baseline']} | {r['bytes'] / 1e6:.2f} MB | "
                   f"{r['triton_us']:.1f} | {r['eager_us']:.1f} | {_f(r['compile_us'])} | {xe:.2f} | "
                   f"{_f(xc, '{:.2f}')} | {_f(tg)} | {_f(eg)} | {_f(xg, '{:.2f}')} | {r['gbps']:.0f} | "
                   f"{_f(r['pct_peak'])} | {r['err_vs_ref']:.1e} |")
    if drows:
        out += ["", "| model (random weights) | slots × tokens | context | runtime eager ms | kernels eager ms "
                "| runtime graph ms | kernels graph ms | kernels + packed graph ms | speed-up (best/best) | min bytes "
                "| % peak runtime | % peak kernels |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in drows:
            best = min(v for v in (r["kernels_eager_ms"], r.get("kernels_graph_ms"), r.get("packed_graph_ms")) if v)
            best_rt = min(v for v in (r["runtime_eager_ms"], r.get("runtime_graph_ms")) if v)
            out.append(f"| {r['config']} | {r['slots']} × {r['tokens_per_slot']} | {r['context']} | "
                       f"{r['runtime_eager_ms']:.3f} | {r['kernels_eager_ms']:.3f} | "
                       f"{_f(r.get('runtime_graph_ms'), '{:.3f}')} | {_f(r.get('kernels_graph_ms'), '{:.3f}')} | "
                       f"{_f(r.get('packed_graph_ms'), '{:.3f}')} | "
                       f"{best_rt / best:.2f} | {r['bytes'] / 1e6:.1f} MB | {_f(r['pct_peak_runtime'])} | "
                       f"{_f(r['pct_peak_kernels'])} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases, no torch.compile")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    ap.add_argument("--no-step", action="store_true", help="skip the decode-step rows")
    ap.add_argument("--only", default="", help="comma-separated kernel names to run (default: all)")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", default=None, help="folder for kernels.md and kernels.json")
    ap.add_argument("--profile-step", action="store_true", help="print GPU time per kernel of the 1-slot steps")
    args = ap.parse_args(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if not torch.cuda.is_available():
        log("[bench.kernels] no CUDA device here: the kernel benchmark needs a GPU (the CPU tests in "
            "tests/kernels check correctness through Triton's interpreter). Nothing measured.")
        return 0
    from kernels.backend import triton_available
    if not triton_available():
        log("[bench.kernels] triton is not installed: nothing to measure against torch.")
        return 0
    import triton

    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name()
    peak, label = peak_bandwidth(name)
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    env = {"device": name, "peak_label": label, "peak_tbps": None if peak is None else peak / 1e12,
           "copy_tbps": copy_bandwidth() / 1e12, "torch": torch.__version__, "triton": triton.__version__,
           "dtype": args.dtype, "iters": args.iters, "l2_bytes": l2, "sms": props.multi_processor_count}
    log(f"[bench.kernels] {name}: datasheet {_f(env['peak_tbps'], '{:.2f}')} TB/s, measured copy "
        f"{env['copy_tbps']:.2f} TB/s, L2 {l2 >> 20} MiB, {env['sms']} SMs")
    torch.manual_seed(0)
    krows = []
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    for case in kernel_cases(args.quick, dtype):
        if only and case.kernel not in only:
            continue
        row = run_case(case, not (args.quick or args.no_compile), args.iters, l2, peak)
        krows.append(row)
        log(f"[bench.kernels] {row['kernel']:17s} {row['case']:32s} triton {row['triton_us']:9.1f} µs  "
            f"eager {row['eager_us']:9.1f}  compile {_f(row['compile_us'])}  graph: triton "
            f"{_f(row['triton_graph_us'])} eager {_f(row['eager_graph_us'])}  err {row['err_vs_ref']:.1e}")
    drows = [] if args.no_step else decode_rows(args.quick, dtype, args.iters, peak, log,
                                                    args.profile_step)
    table = markdown(env, krows, drows)
    print("\n" + table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernels.md").write_text(table + "\n")
        (out / "kernels.json").write_text(json.dumps({"env": env, "kernels": krows, "decode_step": drows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
