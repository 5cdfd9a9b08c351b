"""UpsampleConformerEncoderV2: speech codes (25 Hz) -> encoder states at the 50 Hz mel rate (SPEC2 §9.3-9.4, §10).

Layout (official `flow.pt` names under ``encoder.``): ``embed`` (Linear, LayerNorm, x sqrt(D)), ``pre_lookahead_layer``
(conv k4 over 3 future frames, leaky ReLU, causal conv k3, residual), ``encoders`` (pre-norm rel-pos attention + SiLU
FFN, LayerNorm eps 1e-12, no conv module), ``up_layer`` (nearest x2, causal conv k5), ``up_embed``, ``up_encoders``,
``after_norm``.

Two ways to run it:

* :meth:`UpsampleConformerEncoderV2.forward` — offline, the whole sequence at once; attention is full (padding mask
  only), the lookahead conv sees zeros past the end.
* :meth:`UpsampleConformerEncoderV2.forward_chunk` — the streaming step of §10: the caller's
  :class:`EncoderStreamCache` holds every earlier position's K/V (no mask: bidirectional within a chunk, full over
  the past), the last 2 lookahead-conv outputs and the last 4 upsampled frames. The cache grows without bound, as in
  the reference; it belongs to one stream, the module stays read-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_LN_EPS = 1e-12  # the conformer blocks' LayerNorms (SPEC2 §9.3.3); embed/after_norm use 1e-5


def rel_position_table(rel: torch.Tensor, d_model: int) -> torch.Tensor:
    """ESPnet relative encoding E(r): interleaved [sin(r w_m), cos(r w_m)], w_m = 10000^(-2m/D) (SPEC2 §9.4)."""
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=rel.device) * -(math.log(10000.0) / d_model))
    angle = rel.to(torch.float32)[:, None] * div[None, :]
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(rel.numel(), d_model)


class RelPositionAttention(nn.Module):
    """Multi-head attention with ESPnet relative positions and the u/v biases (SPEC2 §9.4).

    scores = [(q+u)·k + (q+v)·(W_pos E(r))] / sqrt(d_k), r = query position - key position. Queries sit at
    ``offset .. offset+Tq-1`` and keys at ``0 .. offset+Tq-1`` (the cached past first), which is what the reference's
    relative-shift trick yields when the table is built for the key length.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.d_k = n_heads, d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(n_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(n_heads, self.d_k))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_k).transpose(1, 2)  # (B, H, T, d_k)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, D); key_mask (B, Tk) True = valid key; past = (k, v) of earlier positions, (B, H, Tp, d_k).

        Returns the output (B, T, D) and the (k, v) of all positions seen so far (past first)."""
        b, tq, d = x.shape
        q = self.linear_q(x).view(b, tq, self.n_heads, self.d_k)  # (B, Tq, H, d_k): u/v broadcast over heads
        k, v = self._heads(self.linear_k(x)), self._heads(self.linear_v(x))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        tk = k.shape[2]
        offset = tk - tq
        # One table row per distinct r in [-(tq-1), tk-1]; then gather r = offset + i - j for every (i, j).
        rel = torch.arange(tk - 1, -tq, -1, device=x.device)  # r values, largest first
        pos = self.linear_pos(rel_position_table(rel, d).to(x.dtype)).view(-1, self.n_heads, self.d_k)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scores_ac = torch.matmul(q_u, k.transpose(-2, -1))  # (B, H, Tq, Tk)
        scores_bd_all = torch.matmul(q_v, pos.permute(1, 2, 0))  # (B, H, Tq, R), column c holds r = tk-1-c
        i = torch.arange(tq, device=x.device)[:, None]
        j = torch.arange(tk, device=x.device)[None, :]
        column = (tk - 1) - (offset + i - j)
        scores_bd = torch.gather(scores_bd_all, -1, column.expand(b, self.n_heads, tq, tk))
        scores = (scores_ac + scores_bd) / math.sqrt(self.d_k)
        if key_mask is not None:
            invalid = ~key_mask[:, None, None, :]
            probs = torch.softmax(scores.masked_fill(invalid, float("-inf")), dim=-1).masked_fill(invalid, 0.0)
        else:
            probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, tq, d)
        return self.linear_out(out), (k, v)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm block: x += RelPosMHA(LN(x)); x += FFN(LN(x)) (no macaron, no conv module, SPEC2 §9.3.3)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.norm_mha = nn.LayerNorm(d_model, eps=BLOCK_LN_EPS)
        self.self_attn = RelPositionAttention(d_model, n_heads)
        self.norm_ff = nn.LayerNorm(d_model, eps=BLOCK_LN_EPS)
        self.feed_forward = FeedForward(d_model, d_ff)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn, kv = self.self_attn(self.norm_mha(x), key_mask, past)
        x = x + attn
        return x + self.feed_forward(self.norm_ff(x)), kv


class LinearEmbed(nn.Module):
    """``out`` = Linear, LayerNorm (eps 1e-5); the result is scaled by sqrt(D) (the rel-pos module's x-scale)."""

    def __init__(self, d_in: int, d_model: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(d_in, d_model), nn.LayerNorm(d_model, eps=1e-5))
        self.x_scale = math.sqrt(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.x_scale


class PreLookaheadLayer(nn.Module):
    """conv1 (k = lookahead+1) over the next frames, leaky ReLU, causal conv2 (k3), residual (SPEC2 §9.3.2)."""

    def __init__(self, channels: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, 3)
        self.tail = 2  # conv2's causal context, the lookahead cache length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline: x (B, T, C); zeros stand in for the frames past the end."""
        h = F.leaky_relu(self.conv1(F.pad(x.transpose(1, 2), (0, self.lookahead))), 0.01)
        h = self.conv2(F.pad(h, (self.tail, 0)))
        return x + h.transpose(1, 2)

    def forward_chunk(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) includes ``lookahead`` future frames; cache (B, C, 2) = the previous chunk's last conv1 outputs.

        Returns (B, T - lookahead, C) and the new cache."""
        h = F.leaky_relu(self.conv1(x.transpose(1, 2)), 0.01)
        h = torch.cat([cache, h], dim=2)
        new_cache = h[:, :, -self.tail:]
        out = x[:, : x.shape[1] - self.lookahead] + self.conv2(h).transpose(1, 2)
        return out, new_cache


class UpsampleLayer(nn.Module):
    """Nearest-neighbour x stride along time, then a causal Conv1d(k = 2·stride+1) (SPEC2 §9.3.4)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.context = 2 * stride
        self.conv = nn.Conv1d(channels, channels, 2 * stride + 1)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> (B, stride·T, C); cache (B, C, 2·stride) = the previous upsampled frames (zeros offline)."""
        up = F.interpolate(x.transpose(1, 2), scale_factor=float(self.stride), mode="nearest")
        if cache is None:
            up = F.pad(up, (self.context, 0))
        else:
            up = torch.cat([cache, up], dim=2)
        return self.conv(up).transpose(1, 2), up[:, :, -self.context:]


@dataclass
class EncoderStreamCache:
    """One stream's encoder history (SPEC2 §10): per-layer K/V of every earlier position and the two conv tails.

    ``layers[i]`` is (k, v) of shape (B, H, T_i, d_k): first-stage layers at the code rate, up layers at the mel
    rate. Tensors are replaced, never written in place, so a :meth:`fork` may share them."""

    lookahead: torch.Tensor
    upsample: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)

    def fork(self) -> EncoderStreamCache:
        return EncoderStreamCache(self.lookahead, self.upsample, list(self.layers))

    @property
    def length(self) -> int:
        """Positions seen so far at the code rate (the first stage's key count)."""
        first = self.layers[0] if self.layers else None
        return 0 if first is None else first[0].shape[2]


class UpsampleConformerEncoderV2(nn.Module):
    def __init__(self, input_size: int, output_size: int, num_blocks: int, num_up_blocks: int, attention_heads: int,
                 linear_units: int, pre_lookahead_len: int = 3, up_stride: int = 2) -> None:
        super().__init__()
        self.output_size = output_size
        self.embed = LinearEmbed(input_size, output_size)
        self.pre_lookahead_layer = PreLookaheadLayer(output_size, pre_lookahead_len)
        self.encoders = nn.ModuleList(ConformerLayer(output_size, attention_heads, linear_units)
                                      for _ in range(num_blocks))
        self.up_layer = UpsampleLayer(output_size, up_stride)
        self.up_embed = LinearEmbed(output_size, output_size)
        self.up_encoders = nn.ModuleList(ConformerLayer(output_size, attention_heads, linear_units)
                                         for _ in range(num_up_blocks))
        self.after_norm = nn.LayerNorm(output_size, eps=1e-5)

    @property
    def lookahead(self) -> int:
        return self.pre_lookahead_layer.lookahead

    @property
    def up_stride(self) -> int:
        return self.up_layer.stride

    def forward(self, xs: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline: xs (B, T, D) embedded codes, lengths (B,) -> (B, 2T, D) and the (B, 2T) valid mask."""
        b, t, _ = xs.shape
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=xs.device)
        mask = torch.arange(t, device=xs.device)[None, :] < lengths[:, None]
        x = self.pre_lookahead_layer(self.embed(xs))
        for layer in self.encoders:
            x, _ = layer(x, mask)
        x, _ = self.up_layer(x)
        up_mask = torch.arange(x.shape[1], device=xs.device)[None, :] < (lengths * self.up_stride)[:, None]
        x = self.up_embed(x)
        for layer in self.up_encoders:
            x, _ = layer(x, up_mask)
        return self.after_norm(x), up_mask

    def new_stream_cache(self, batch: int = 1, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu") -> EncoderStreamCache:
        d = self.output_size
        return EncoderStreamCache(
            lookahead=torch.zeros(batch, d, self.pre_lookahead_layer.tail, dtype=dtype, device=device),
            upsample=torch.zeros(batch, d, self.up_layer.context, dtype=dtype, device=device),
            layers=[None] * (len(self.encoders) + len(self.up_encoders)))

    def forward_chunk(self, xs: torch.Tensor, cache: EncoderStreamCache, last_chunk: bool = False) -> torch.Tensor:
        """Streaming step (SPEC2 §10): xs (B, T, D) embedded codes whose last ``lookahead`` are lookahead only
        (unless ``last_chunk``: then zeros are appended and every code is emitted). Updates ``cache``; returns
        (B, 2·T_out, D)."""
        x = self.embed(xs)
        if last_chunk:
            x = F.pad(x, (0, 0, 0, self.lookahead))
        x, cache.lookahead = self.pre_lookahead_layer.forward_chunk(x, cache.lookahead)
        n_first = len(self.encoders)
        for i, layer in enumerate(self.encoders):
            x, cache.layers[i] = layer(x, None, cache.layers[i])
        x, cache.upsample = self.up_layer(x, cache.upsample)
        x = self.up_embed(x)
        for i, layer in enumerate(self.up_encoders):
            x, cache.layers[n_first + i] = layer(x, None, cache.layers[n_first + i])
        return self.after_norm(x)
