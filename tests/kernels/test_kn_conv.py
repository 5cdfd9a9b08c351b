"""Streaming causal conv with cached left state: kernel vs reference, streamed == offline, and the
reference == ``voxcore.streaming.StreamingConv1d`` (the vocoder's conv)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import ops, reference
from kn_helpers import TARGETS, assert_close, gen, target

# (B, Cin, Cout, T, kernel, dilation, stride, leaky slope, residual): HiFi-GAN resblock convs
# (dilated, with/without input activation and residual), conv_post (Cout=1), a strided encoder conv,
# odd channel counts, more than one channel block (Cin 40) and time block (T 80).
CASES = [
    (2, 5, 7, 9, 3, 1, 1, 0.1, False),
    (1, 40, 17, 12, 7, 3, 1, None, True),
    (2, 6, 4, 10, 4, 1, 2, 0.1, False),
    (3, 3, 1, 80, 7, 1, 1, 0.01, False),
    (1, 16, 16, 1, 3, 5, 1, 0.1, True),
]


def _case(b, cin, cout, t, k, d, s, res, dev, dtype, seed):
    g = gen(seed)
    h = (k - 1) * d + 1 - s
    x = torch.randn(b, cin, t, generator=g).to(dev, dtype)
    hist = torch.randn(b, cin, h, generator=g).to(dev, dtype)
    w = (torch.randn(cout, cin, k, generator=g) / (cin * k) ** 0.5).to(dev, dtype)
    bias = torch.randn(cout, generator=g).to(dev, dtype)
    r = torch.randn(b, cout, t // s, generator=g).to(dev, dtype) if res else None
    return x, hist, w, bias, r


@pytest.mark.parametrize("device,dtype", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_causal_conv_matches_reference(device, dtype, case):
    dev = target(device)
    b, cin, cout, t, k, d, s, slope, res = case
    x, hist, w, bias, r = _case(b, cin, cout, t, k, d, s, res, dev, dtype, seed=cin * t)
    out, new_hist = ops.causal_conv1d(x, hist, w, bias, s, d, slope, r, backend="triton")
    ref_out, ref_hist = reference.causal_conv1d(x, hist, w, bias, s, d, slope, r)
    assert_close(out, ref_out, dtype, "conv")
    assert torch.equal(new_hist, ref_hist)  # copied (and activated), never summed


@pytest.mark.parametrize("chunks", [[1] * 11, [3, 5, 3], [11]], ids=["ones", "odd", "whole"])
def test_streamed_equals_offline(chunks):
    """Chunks of 1 and odd sizes through the kernel, carrying history, == one offline reference
    pass from a zero history; new input never changes what was already emitted."""
    dev = target("cpu")
    x, _, w, bias, _ = _case(2, 6, 5, 11, 5, 2, 1, False, dev, torch.float32, seed=3)
    hist = torch.zeros(2, 6, 8)
    offline, _ = reference.causal_conv1d(x, hist, w, bias, 1, 2, 0.1)
    outs, t0 = [], 0
    for c in chunks:
        out, hist = ops.causal_conv1d(x[..., t0:t0 + c], hist, w, bias, 1, 2, 0.1, backend="triton")
        outs.append(out)
        t0 += c
    assert_close(torch.cat(outs, -1), offline, torch.float32, "conv")
    x2 = x.clone()
    x2[..., 6:] = 100.0
    early, _ = reference.causal_conv1d(x2, torch.zeros(2, 6, 8), w, bias, 1, 2, 0.1)
    assert torch.equal(early[..., :6], offline[..., :6])


def test_reference_is_the_streaming_conv():
    """reference.causal_conv1d == StreamingConv1d fed the leaky-ReLU'd input, state included."""
    from voxcore.streaming import StreamingConv1d, bind_state_keys, init_states

    conv = StreamingConv1d(6, 4, 7, dilation=3, causal=True)
    bind_state_keys(conv)
    states = init_states(conv, 2)
    x = torch.randn(2, 6, 10, generator=gen(5))
    hist = states[conv.state_key].history.clone()
    with torch.no_grad():
        want = conv(F.leaky_relu(x, 0.1), states)
    out, new_hist = reference.causal_conv1d(x, hist, conv.conv.weight, conv.conv.bias, 1, 3, 0.1)
    assert torch.equal(out, want)
    assert torch.equal(new_hist, states[conv.state_key].history)
