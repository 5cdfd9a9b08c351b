"""The conformer encoder of the Step-Audio-TTS-3B flow (CosyVoice v1 25 Hz `ConformerEncoder`), official key names.

Golden SPEC (step_audio_v1) §8 step 3: a linear input layer (Linear, LayerNorm, × sqrt(D)) with the ESPnet relative
positional table, N pre-norm blocks ``x += RelPosMHA(LN(x)); x += FFN(LN(x))`` (no macaron, no conv module, no
per-block final norm), then ``after_norm``. Every LayerNorm uses eps 1e-5 — unlike Step-Audio 2's conformer (1e-12 in
its blocks), which is why this one is written here and not shared. Attention is full, with only a padding mask: the
offline reference runs no chunk masks.

The relative table is computed per call for exactly the positions in use (no max-length buffer to outgrow).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LN_EPS = 1e-5


def relative_position_table(length: int, dim: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[2·length − 1, dim] ESPnet table E(r) for r = length−1 down to −(length−1).

    Row j holds r = length − 1 − j; columns interleave [sin(r·w_m), cos(r·w_m)], w_m = 10000^(−2m/dim)
    (Step-Audio 2 SPEC §9 step 4). r = query position − key position, positive when the key is to the left.
    """
    rel = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / dim))
    angles = rel * freqs
    table = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(2 * length - 1, dim)
    return table.to(dtype)


class LinearEmbed(nn.Module):
    """`encoder.embed`: Linear(D→D), LayerNorm, then × sqrt(D) (the positional table is returned, not added)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim, eps=LN_EPS))
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.out(x) * self.scale
        return x, relative_position_table(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)


class RelPositionAttention(nn.Module):
    """scores = [(q+u)·k + (q+v)·(W_pos E(r))] / sqrt(d_k); `linear_pos` has no bias (SPEC §8 step 3)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"encoder width {dim} is not divisible by {heads} heads")
        self.heads, self.d_k = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.d_k))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_k)  # (B, T, H, d_k)

    def forward(self, x: torch.Tensor, pos_table: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pos_table (2T−1, D), key_valid (B, T) bool -> (B, T, D)."""
        batch, length, _ = x.shape
        q, k, v = self._split(self.linear_q(x)), self._split(self.linear_k(x)), self._split(self.linear_v(x))
        p = self.linear_pos(pos_table).view(-1, self.heads, self.d_k).transpose(0, 1)  # (H, 2T−1, d_k)
        k, v = k.transpose(1, 2), v.transpose(1, 2)                                       # (B, H, T, d_k)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))  # (B, H, T, 2T−1)
        # Table row T−1−(i−j) holds r = i − j for query i and key j: the ESPnet "rel_shift", as a gather.
        i = torch.arange(length, device=x.device)
        rows = (length - 1 - i[:, None] + i[None, :]).expand(batch, self.heads, length, length)
        position = torch.gather(position, -1, rows)
        scores = (content + position) / math.sqrt(self.d_k)
        masked = ~key_valid[:, None, None, :]
        probs = torch.softmax(scores.masked_fill(masked, float("-inf")), dim=-1).masked_fill(masked, 0.0)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, length, -1)
        return self.linear_out(out)


class FeedForward(nn.Module):
    """`feed_forward`: Linear, SiLU (wenet "swish"), Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(nn.functional.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Pre-norm block: x += RelPosMHA(norm_mha(x)); x += FFN(norm_ff(x))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(dim, heads)
        self.feed_forward = FeedForward(dim, hidden)
        self.norm_mha = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm_ff = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, pos_table: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos_table, key_valid)
        return x + self.feed_forward(self.norm_ff(x))


class ConformerEncoderV1(nn.Module):
    """`encoder.*`: embed, `encoders.N`, `after_norm`. (B, T, D_in) embeddings -> (B, T, D)."""

    def __init__(self, input_size: int, output_size: int, attention_heads: int, linear_units: int,
                 num_blocks: int) -> None:
        super().__init__()
        self.embed = LinearEmbed(input_size, output_size)
        self.encoders = nn.ModuleList(ConformerBlock(output_size, attention_heads, linear_units)
                                      for _ in range(num_blocks))
        self.after_norm = nn.LayerNorm(output_size, eps=LN_EPS)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (B,) marks padded frames (keys masked out); None means every frame is valid."""
        key_valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if lengths is not None:
            key_valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        x, pos_table = self.embed(x)
        for block in self.encoders:
            x = block(x, pos_table, key_valid)
        return self.after_norm(x)
