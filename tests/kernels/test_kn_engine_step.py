"""The runtime's decode step goes through the kernels' dispatcher: on CPU (automatic) it keeps the
model's own forward, and with the kernels forced (Triton's interpreter on CPU, compiled on CUDA) the
engine decodes the same tokens, plain and with MTP drafts, across length-bucket views."""
from __future__ import annotations

import warnings

import pytest

from kn_helpers import TARGETS, target


def _model(dev, n_mtp=2):
    from runtime.model import build_model
    from runtime.presets import tiny_config

    cfg = tiny_config(text_vocab_size=32, audio_offset=32, linguistic_size=16, semantic_size=16, n_mtp=n_mtp)
    return build_model(cfg, seed=3, init_std=0.05, device=dev)


def test_cpu_decode_step_asks_the_dispatcher_and_keeps_the_model_forward(monkeypatch):
    import runtime.kernel_step as ks
    from runtime.engine import DecodeEngine

    model = _model("cpu", n_mtp=0)
    asked = []
    real = ks.use_triton

    def spy(op, module, tensor, backend, warn_off_cuda=True):
        asked.append((op, tensor.device.type, backend, warn_off_cuda))
        return real(op, module, tensor, backend, warn_off_cuda=warn_off_cuda)

    monkeypatch.setattr(ks, "use_triton", spy)
    monkeypatch.delenv("VOXLINE_KERNELS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # the torch path is the intended one on CPU: no warning
        eng = DecodeEngine(model, batch=1, capacity=32)
    assert asked == [("decode_step", "cpu", None, False)]
    assert eng.step_forward is model


def test_a_model_wrapper_keeps_its_own_forward():
    """The realtime engine wraps the model (AudioOnlyLM records positions for its constrained logits):
    even with the kernels forced, its forward must run, or its logits would read stale positions."""
    from runtime.audio_decoding import AudioOnlyLM
    from runtime.engine import DecodeEngine

    class Everything:
        def mask(self, logits, positions):
            return logits

    wrapped = AudioOnlyLM(_model("cpu", n_mtp=0), Everything())
    eng = DecodeEngine(wrapped, batch=1, capacity=32, kernel_backend="triton")
    assert eng.step_forward is wrapped


@pytest.mark.parametrize("device,dtype", TARGETS[:2])
@pytest.mark.parametrize("k", [0, 2])
def test_engine_with_the_kernels_decodes_the_same_tokens(device, dtype, k):
    dev = target(device)
    from runtime.engine import DecodeEngine
    from runtime.generate import generate
    from runtime.kernel_step import KernelStepForward

    model = _model(dev)
    prompts = [[3, 7, 1, 30, 2], [5, 9, 11]]
    want = generate(DecodeEngine(model, batch=2, capacity=48, n_draft=k, kernel_backend="torch"), prompts,
                    max_new_tokens=6)
    eng = DecodeEngine(model, batch=2, capacity=48, n_draft=k, kernel_backend="triton")
    assert isinstance(eng.step_forward, KernelStepForward)
    eng.attend_over(32)                              # the chat engine's bucket view: a strided cache slice
    got = generate(eng, prompts, max_new_tokens=6)
    assert got.tokens == want.tokens
