"""Compile every Triton kernel ahead of time for a GPU architecture, on a machine without a GPU.

    .venv/bin/python -m kernels.aot                 # Hopper (sm_90): registers, spills, shared memory
    .venv/bin/python -m kernels.aot --arch 100 --json

Triton's interpreter (the CPU tests) runs kernels as numpy and accepts code the compiler rejects
(non-constexpr globals, mixed loop-carried types ...). This closes that gap without a device: the
wrappers in ``kernels.triton_*`` are called on small CPU tensors of representative shapes with their
jit functions swapped for recorders; each recorded launch is specialised by Triton's own binder
(argument types, 16-byte alignment, constexprs, num_warps) and compiled to a cubin for
``GPUTarget("cuda", arch, 32)``; ``cuobjdump`` then reports registers, spill (local) memory and
shared memory per variant, the numbers METHOD.md says to read before spending device time.
Must run in a process where the kernels were imported compiled (not under ``TRITON_INTERPRET``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kw)`` records instead of launching."""

    def __init__(self, fn, log: list) -> None:
        self.fn, self.log = fn, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.fn, grid, args, kwargs))


def record_launches(dtypes=(torch.bfloat16, torch.float32)) -> list[tuple[str, tuple]]:
    """(label, (fn, grid, args, kwargs)) for the launches of representative calls of every kernel."""
    from kernels import triton_attention as ta, triton_conv as tc, triton_norm as tn, triton_sampling as ts

    log: list = []
    out: list[tuple[str, tuple]] = []
    mods = (tn, ta, ts, tc)
    saved = {(m, name): getattr(m, name) for m in mods for name in dir(m) if name.startswith("_") and
             type(getattr(m, name)).__name__ == "JITFunction"}
    if not saved:
        raise RuntimeError("no compiled JITFunctions found: were the kernels imported under TRITON_INTERPRET?")
    for (m, name), fn in saved.items():
        setattr(m, name, _Recorder(fn, log))
    try:
        def rec(label, call):
            n = len(log)
            call()
            out.extend((f"{label} [{entry[0].__name__}]", entry) for entry in log[n:])

        for dt in dtypes:
            d = str(dt).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")
            rn = lambda *s: torch.randn(s).to(dt)  # noqa: E731
            rec(f"rms_norm {d} D896 +res", lambda: tn.rms_norm(rn(32, 896), rn(896), 1e-6, rn(32, 896)))
            rec(f"rms_norm {d} D4096", lambda: tn.rms_norm(rn(64, 4096), rn(4096), 1e-6))
            pos = torch.arange(4).expand(8, 4).contiguous()
            ang = torch.rand(2048, 64)
            rec(f"rotary {d} H14/2 Dh64 +cache", lambda: tn.rotary_qk_cache(
                rn(8, 4, 14, 64).transpose(1, 2), rn(8, 4, 2, 64).transpose(1, 2), rn(8, 4, 2, 64).transpose(1, 2),
                pos, ang.cos(), ang.sin(), rn(8, 2, 2048, 64), rn(8, 2, 2048, 64)))
            for hq, hk, dh, splits in ((14, 2, 64, 1), (14, 2, 64, 4), (32, 8, 128, 4)):
                rec(f"attention {d} H{hq}/{hk} T4 Dh{dh} splits{splits}", lambda hq=hq, hk=hk, dh=dh, splits=splits:
                    ta.decode_attention(rn(8, 4, hq, dh).transpose(1, 2), rn(8, hk, 2048, dh), rn(8, hk, 2048, dh),
                                        pos, num_splits=splits))
            rec(f"sample {d} V151936", lambda: ts.sample(rn(8, 151936), torch.ones(8), torch.full((8,), 50),
                                                         torch.full((8,), 0.9), torch.rand(8)))
            rec(f"mtp_accept {d} K3 V151936", lambda: ts.mtp_accept(
                rn(8, 4, 151936), torch.zeros(8, 4096, dtype=torch.long), torch.zeros(8, dtype=torch.long),
                torch.ones(8, dtype=torch.bool)))
            rec(f"conv {d} C256 k3 d3 +act+res", lambda: tc.causal_conv1d(
                rn(8, 256, 96), rn(8, 256, 6), rn(256, 256, 3), rn(256), 1, 3, 0.1, rn(8, 256, 96)))
            rec(f"conv {d} C512->1 k7", lambda: tc.causal_conv1d(rn(2, 512, 4096), rn(2, 512, 6), rn(1, 512, 7),
                                                                 None, 1, 1, 0.01))
    finally:
        for (m, name), fn in saved.items():
            setattr(m, name, fn)
    return out


def _cuobjdump() -> str:
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def compile_launch(fn, args, kwargs, arch: int):
    """Compile one recorded launch exactly as the launcher would specialise it, for ``arch``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(kwargs, debug=False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def resources(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {"registers": int(fields.get("REG", -1)), "stack": int(fields.get("STACK", -1)),
            "local": int(fields.get("LOCAL", -1)), "shared": int(fields.get("SHARED", -1))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--dtypes", default="bf16,fp32")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernels.aot: unset TRITON_INTERPRET (it compiles the kernels, it does not interpret them)")
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("kernels.aot: triton is not installed")
        return 2
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    launches = record_launches(tuple(names[d] for d in args.dtypes.split(",")))
    rows, failures = [], []
    for label, (fn, _grid, a, kw) in launches:
        t0 = time.perf_counter()
        try:
            k = compile_launch(fn, a, kw, args.arch)
            row = {"variant": label, **resources(k.asm["cubin"]), "num_warps": k.metadata.num_warps,
                   "shared": k.metadata.shared, "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row)
        except Exception as exc:  # report every failure, not only the first
            failures.append({"variant": label, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    if args.json:
        print(json.dumps({"arch": args.arch, "compiled": rows, "failed": failures}))
    else:
        print(f"sm_{args.arch}: {len(rows)} kernel variants compiled, {len(failures)} failed")
        print("| variant | warps | registers | spill/local bytes | stack | shared bytes |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['num_warps']} | {r['registers']} | {r['local']} | {r['stack']} | "
                  f"{r['shared']} |")
        for f in failures:
            print(f"FAILED {f['variant']}: {f['error']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
