"""Dispatchers: the torch fallback (with a one-time warning), backend choice, argument checks, and
a process where triton cannot be imported at all. None of these need Triton."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import kernels
from kernels import backend, ops, reference
from kn_helpers import gen

ROOT = Path(__file__).resolve().parents[2]


def _all_ops_inputs():
    """One small CPU call of every op: (name, dispatcher thunk, reference thunk)."""
    g = gen(0)
    x, r, w = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g), torch.rand(16, generator=g)
    q, k, v = (torch.randn(2, h, 3, 8, generator=g) for h in (4, 2, 2))
    pos = torch.tensor([[0, 1, 2], [5, 6, 7]])
    cos, sin = torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)
    kc, vc = torch.randn(2, 2, 10, 8, generator=g), torch.randn(2, 2, 10, 8, generator=g)
    logits = torch.randn(2, 3, 20, generator=g)
    temp, tk, tp, u = torch.tensor([0.0, 1.0]), torch.tensor([0, 5]), torch.tensor([1.0, 0.8]), torch.rand(2, 3)
    toks, lens = torch.randint(0, 20, (2, 12), generator=g), torch.tensor([2, 4])
    cx, ch, cw = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 2, generator=g), torch.randn(3, 4, 3)
    return [
        ("rms_norm", lambda: ops.rms_norm(x, w, 1e-6), lambda: reference.rms_norm(x, w, 1e-6)),
        ("add_rms_norm", lambda: ops.add_rms_norm(x, r, w, 1e-6), lambda: reference.add_rms_norm(x, r, w, 1e-6)),
        ("rotary_qk_cache", lambda: ops.rotary_qk_cache(q, k, pos, cos, sin, v, kc.clone(), vc.clone()),
         lambda: reference.rotary_qk_cache(q, k, v, pos, cos, sin, kc.clone(), vc.clone())),
        ("decode_attention", lambda: ops.decode_attention(q, kc, vc, pos),
         lambda: reference.decode_attention(q, kc, vc, pos)),
        ("sample", lambda: ops.sample(logits, temp, tk, tp, u),
         lambda: reference.sample(logits.reshape(6, 20), temp.repeat_interleave(3), tk.repeat_interleave(3),
                                  tp.repeat_interleave(3), u.reshape(6)).reshape(2, 3)),
        ("mtp_accept", lambda: ops.mtp_accept(logits, toks.clone(), lens.clone()),
         lambda: reference.mtp_accept(logits, toks.clone(), lens.clone())),
        ("causal_conv1d", lambda: ops.causal_conv1d(cx, ch, cw, None, 1, 1, 0.1),
         lambda: reference.causal_conv1d(cx, ch, cw, None, 1, 1, 0.1)),
    ]


def _same(a, b):
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize("name,op,ref", _all_ops_inputs(), ids=lambda v: v if isinstance(v, str) else "")
def test_cpu_fallback_is_the_reference_and_warns_once(monkeypatch, name, op, ref):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    backend.reset_warnings()
    with pytest.warns(kernels.KernelFallbackWarning, match=name):
        got = op()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a second call must not warn again
        got2 = op()
    assert _same(got, ref()) and _same(got2, ref())


def test_env_var_selects_the_reference_silently(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    backend.reset_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _, op, _ in _all_ops_inputs():
            op()


def test_interpreter_setting_does_not_leak():
    """conftest interprets the kernels but must leave TRITON_INTERPRET as it found it."""
    import os

    import kn_helpers

    assert os.environ.get("TRITON_INTERPRET") == kn_helpers.TRITON_INTERPRET_BEFORE, "TRITON_INTERPRET leaked"


def test_bad_backend_names_fail_clearly(monkeypatch):
    x, w = torch.randn(2, 4), torch.ones(4)
    with pytest.raises(ValueError, match="backend"):
        ops.rms_norm(x, w, 1e-6, backend="cuda")
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=backend.ENV_VAR):
        ops.rms_norm(x, w, 1e-6)


def test_arguments_are_checked():
    x = torch.randn(2, 3, 4, 8)
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm(torch.randn(2, 8), torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="kv heads"):
        ops.decode_attention(torch.randn(1, 3, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8),
                             torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="even"):
        ops.rotary_qk_cache(torch.randn(2, 4, 4, 7), torch.randn(2, 2, 4, 7), torch.zeros(2, 4, dtype=torch.long),
                            torch.randn(9, 7), torch.randn(9, 7))
    with pytest.raises(ValueError, match="history"):
        ops.causal_conv1d(torch.randn(1, 4, 6), torch.randn(1, 4, 3), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="multiple of stride"):
        ops.causal_conv1d(torch.randn(1, 4, 5), torch.randn(1, 4, 1), torch.randn(2, 4, 3), stride=2)
    with pytest.raises(ValueError, match="int64"):
        ops.mtp_accept(torch.randn(1, 2, 5), torch.zeros(1, 8, dtype=torch.int32), torch.zeros(1, dtype=torch.long))
    assert x.shape  # (keeps the shapes above readable)


def test_everything_works_without_triton():
    """A process where ``import triton`` fails: kernels imports, every op falls back with a warning,
    a forced Triton call says why it cannot run."""
    code = f"""
import sys, warnings
sys.modules["triton"] = None                      # makes `import triton` raise ImportError
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
import torch
torch.set_num_threads(1)
import kernels
from kernels import backend
from test_kn_dispatch import _all_ops_inputs, _same
assert not kernels.triton_available()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name, op, ref in _all_ops_inputs():
        assert _same(op(), ref()), name
messages = [str(w.message) for w in caught if issubclass(w.category, kernels.KernelFallbackWarning)]
assert len(messages) == 7 and all("Triton is not installed" in m for m in messages), messages
try:
    kernels.rms_norm(torch.randn(2, 4), torch.ones(4), 1e-6, backend="triton")
    raise SystemExit("forced triton did not fail")
except RuntimeError as exc:
    assert "unavailable" in str(exc), exc
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_long_convs_go_to_cudnn_automatically(monkeypatch):
    """Automatic dispatch keeps a long offline conv off the Triton kernel (cuDNN wins there), but an
    explicit backend="triton" and streaming-sized chunks still reach the kernel path."""
    import kernels.ops as ops_mod

    asked = []

    def spy(name, module, x, backend):
        asked.append((name, backend))
        return None  # the reference

    monkeypatch.setattr(ops_mod, "use_triton", spy)
    w = torch.randn(4, 4, 3)
    long_x, short_x = torch.randn(1, 4, ops_mod.LONG_CONV_FRAMES), torch.randn(1, 4, 96)
    out, _ = ops_mod.causal_conv1d(long_x, torch.zeros(1, 4, 2), w)
    assert asked[-1] == ("causal_conv1d", "torch")
    ref, _ = reference.causal_conv1d(long_x, torch.zeros(1, 4, 2), w, None)
    assert torch.equal(out, ref)
    ops_mod.causal_conv1d(short_x, torch.zeros(1, 4, 2), w)
    assert asked[-1] == ("causal_conv1d", None)
    ops_mod.causal_conv1d(long_x, torch.zeros(1, 4, 2), w, backend="triton")
    assert asked[-1] == ("causal_conv1d", "triton")
