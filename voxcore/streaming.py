"""Streaming building blocks shared by the tokenizer and the vocoder.

One pattern everywhere (moshi `StreamingModule` style, with explicit state): every stateful leaf
module (`StreamingConv1d`, `StreamingConvTranspose1d`, `CausalSelfAttention`, `tokenizer.features.LogMel`) keeps
what it needs from the past in a small dataclass whose tensors have a leading batch/slot dimension.
A model's state is a `dict[str, LeafState]` keyed by the leaf's module path (`bind_state_keys`).
`forward(x, states=None)` runs offline: each leaf then starts from a fresh zero state, so offline and
streamed runs take the *same* code path and differ only by where the chunk boundaries fall.

Sessions are batch slots: `reset_slots(states, mask)` puts the chosen slots back to their initial state
without touching the others; caches have a fixed size (conv history, sliding-window KV).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LeafStates = dict[str, "LeafState"]


@dataclass
class LeafState:
    """Base class: tensor fields have a leading batch dim and reset to zero for a new session."""

    def reset(self, mask: torch.Tensor) -> None:
        """Zero the slots where `mask` [B] (bool) is true, in place."""
        with torch.inference_mode():  # states written by inference-mode forwards are inference tensors
            for field in dataclasses.fields(self):
                value = getattr(self, field.name)
                if isinstance(value, torch.Tensor) and value.numel():
                    value[mask] = 0

    @property
    def batch_size(self) -> int:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        raise ValueError("state has no tensors")


class StreamingLeaf(nn.Module):
    """A module that owns one `LeafState`; `state_key` is set by `bind_state_keys`."""

    state_key: str = ""

    def init_leaf_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> LeafState:
        raise NotImplementedError

    def leaf_state(self, states: LeafStates | None, like: torch.Tensor) -> LeafState:
        """The state to use: the session's (streaming) or a fresh zero one (offline)."""
        if states is None:
            return self.init_leaf_state(like.shape[0], like.device, like.dtype)
        return states[self.state_key]


def bind_state_keys(root: nn.Module) -> None:
    """Name every streaming leaf under `root` by its module path (call once after building)."""
    for name, module in root.named_modules():
        if isinstance(module, StreamingLeaf):
            module.state_key = name or "."


def init_states(root: nn.Module, batch: int, device=None, dtype=torch.float32) -> LeafStates:
    """Fresh states for all leaves under `root` (which must have been bound)."""
    device = device or next(root.parameters()).device
    return {
        m.state_key: m.init_leaf_state(batch, torch.device(device), dtype)
        for m in root.modules()
        if isinstance(m, StreamingLeaf)
    }


def reset_slots(states: LeafStates, mask: torch.Tensor) -> None:
    """Start new sessions in the slots where `mask` [B] is true."""
    for state in states.values():
        state.reset(mask)


# ----------------------------------------------------------------------------------------------- convs


@dataclass
class ConvState(LeafState):
    history: torch.Tensor  # [B, C_in, H] the last H input frames (zeros before the start)


class StreamingConv1d(StreamingLeaf):
    """Conv1d that is causal (left-padded, streamable) or centred (non-causal, offline only).

    Causal: output frame t sees inputs up to t*stride + stride - 1, never later ones. Streaming keeps
    `H = (k-1)*dilation + 1 - stride` input frames of history; chunks must be multiples of `stride`.
    Non-causal mode uses symmetric "same" padding so standard HiFi-GAN weights load unchanged.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 causal: bool = True, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation, bias=bias)
        self.causal = causal
        self.stride = stride
        self.history_len = (kernel - 1) * dilation + 1 - stride
        if self.history_len < 0:
            raise ValueError("kernel span must be >= stride")
        self.pad = (kernel - 1) * dilation // 2  # non-causal "same" padding

    def init_leaf_state(self, batch, device, dtype) -> ConvState:
        return ConvState(torch.zeros(batch, self.conv.in_channels, self.history_len, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        """x [B, C_in, T] -> [B, C_out, T // stride]."""
        if not self.causal:
            if states is not None:
                raise ValueError("a non-causal conv cannot stream; wrap it in vocoder.hifigan.WindowedGenerator")
            return F.conv1d(x, self.conv.weight, self.conv.bias, self.stride, self.pad, self.conv.dilation)
        if x.shape[-1] % self.stride:
            raise ValueError(f"chunk of {x.shape[-1]} frames is not a multiple of stride {self.stride}")
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        state = self.leaf_state(states, x)
        full = torch.cat([state.history, x], dim=-1)  # [B, C_in, H + T]
        if self.history_len:
            state.history = full[..., full.shape[-1] - self.history_len:]
        return self.conv(full)


@dataclass
class ConvTrState(LeafState):
    carry: torch.Tensor  # [B, C_out, k - stride] partial outputs still waiting for the next input


class StreamingConvTranspose1d(StreamingLeaf):
    """Upsampling ConvTranspose1d, causal (streamable) or HiFi-GAN-centred.

    Causal: T inputs give exactly T*stride outputs. The last k - stride samples of the full transposed
    conv also receive contributions from future inputs, so they are carried (without bias, which the
    next chunk adds once) and summed into the next chunk's first samples.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, causal: bool = True,
                 padding: int | None = None, output_padding: int | None = None):
        super().__init__()
        if kernel < stride:
            raise ValueError("kernel must be >= stride")
        self.conv = nn.ConvTranspose1d(cin, cout, kernel, stride)
        self.causal, self.stride, self.kernel = causal, stride, kernel
        # Centred padding that gives T*stride outputs (HiFi-GAN convention, covers odd k - stride).
        self.padding = (kernel - stride + 1) // 2 if padding is None else padding
        self.output_padding = (kernel - stride) % 2 if output_padding is None else output_padding

    def init_leaf_state(self, batch, device, dtype) -> ConvTrState:
        return ConvTrState(torch.zeros(batch, self.conv.out_channels, self.kernel - self.stride,
                                       device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        """x [B, C_in, T] -> [B, C_out, T * stride]."""
        w, b = self.conv.weight, self.conv.bias
        if not self.causal:
            if states is not None:
                raise ValueError("a non-causal transposed conv cannot stream")
            return F.conv_transpose1d(x, w, b, self.stride, self.padding, self.output_padding)
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        state = self.leaf_state(states, x)
        full = F.conv_transpose1d(x, w, None, self.stride)  # [B, C_out, (T-1)*s + k], no bias yet
        n_out = x.shape[-1] * self.stride
        overlap = self.kernel - self.stride
        head = full[..., :overlap] + state.carry
        full = torch.cat([head, full[..., overlap:]], dim=-1)
        state.carry = full[..., n_out:]
        out = full[..., :n_out]
        return out + b[None, :, None] if b is not None else out


# ------------------------------------------------------------------------------------------ attention
# Causal sliding-window self-attention with a fixed-size KV cache, and the transformer stack on it.
#
# The window bounds both the receptive field and the cache: a query at position p sees keys in
# (p - window, p]. The cache keeps the last `window` rotated keys/values of each slot, so memory per
# session is fixed no matter how long it streams. Positions count frames since the slot's reset (a tensor
# [B], not a Python int) so slots that joined at different times share one batched step.


@dataclass
class AttnState(LeafState):
    k: torch.Tensor  # [B, H, W, Dh] last W keys (RoPE already applied); zeros before the start
    v: torch.Tensor  # [B, H, W, Dh]
    pos: torch.Tensor  # [B] long: frames this slot has seen since its reset


def rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding. x [B, H, T, Dh], pos [B, T] -> [B, H, T, Dh]."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = pos.to(torch.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    cos, sin = angles.cos()[:, None].to(x.dtype), angles.sin()[:, None].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(StreamingLeaf):
    """Multi-head causal attention over a sliding window, RoPE positions, streaming KV cache."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError("dim must split into heads of even size")
        self.heads, self.head_dim, self.window = heads, dim // heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def init_leaf_state(self, batch, device, dtype) -> AttnState:
        shape = (batch, self.heads, self.window, self.head_dim)
        return AttnState(torch.zeros(shape, device=device, dtype=dtype),
                         torch.zeros(shape, device=device, dtype=dtype),
                         torch.zeros(batch, device=device, dtype=torch.long))

    def forward(self, x: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]; with `states`, continues the slot's stream."""
        B, T, D = x.shape
        if T == 0:
            return x
        state = self.leaf_state(states, x)
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, T, Dh]
        steps = torch.arange(T, device=x.device)
        q_pos = state.pos[:, None] + steps  # [B, T]
        q, k = rope(q, q_pos), rope(k, q_pos)
        W = self.window
        k_pos = torch.cat([state.pos[:, None] - W + torch.arange(W, device=x.device), q_pos], dim=1)  # [B, W+T]
        keys = torch.cat([state.k, k], dim=2)  # [B, H, W+T, Dh]
        values = torch.cat([state.v, v], dim=2)
        rel = q_pos[:, :, None] - k_pos[:, None, :]  # [B, T, W+T]
        # Positions < 0 are the zero padding before the session started: never attend to them.
        allowed = (rel >= 0) & (rel < W) & (k_pos[:, None, :] >= 0)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None])  # [B, H, T, Dh]
        state.k, state.v = keys[:, :, -W:], values[:, :, -W:]
        state.pos = state.pos + T
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class TransformerBlock(nn.Module):
    """Pre-norm block: causal attention + GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]."""
        x = x + self.attn(self.norm1(x), states)
        return x + self.mlp(self.norm2(x))


class CausalTransformer(nn.Module):
    """A stack of `TransformerBlock`s with a final LayerNorm."""

    def __init__(self, dim: int, layers: int, heads: int, window: int):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, window) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]."""
        for block in self.blocks:
            x = block(x, states)
        return self.norm(x)
