"""The streaming Paraformer encoder (FunASR ``SANMEncoderChunkOpt``) as Step-Audio's tokenizer runs it (SPEC §3.3).

Only the chunk step exists here: the reference never runs the encoder offline, and its chunked output differs
from a full-context pass by design (each call sees a 9-row window plus a short key/value look-back), so the
tokenizer's codes are defined by this step.

Per call with k new LFR rows F (SPEC §3.3):
1. x = F * sqrt(output_size), plus the sinusoidal code of absolute 1-based positions s+1 .. s+k (s rows seen);
2. X = [overlap cache, x], the cache being the last ``overlap`` rows of the previous X (zeros at the first call);
3. pre-norm SAN-M blocks: ``encoders0.0`` (560 -> D, no attention residual) and ``encoders.i`` (D -> D);
4. ``after_norm``; the caller keeps the last k rows.

SAN-M attention (per block, window u of R rows): ``linear_q_k_v`` -> q, k, v; an FSMN memory (depthwise conv over
v, this window only, plus v) is added to ``linear_out`` of softmax attention over [cached keys, window keys] with
no mask. Each block's key/value cache keeps the rows that just left the window (window minus its last
``lookahead`` rows), at most ``look_back * chunk_frames`` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-12


@dataclass(frozen=True)
class SANMEncoderConfig:
    """Encoder sizes (FunASR ``encoder_conf``; defaults are the Paraformer-large streaming template, SPEC §3.3)."""

    input_size: int = 560
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50
    kernel_size: int = 11
    sanm_shfit: int = 0  # FunASR's spelling; shifts the FSMN kernel's centre

    @classmethod
    def from_funasr(cls, encoder_conf: dict, input_size: int = 560) -> SANMEncoderConfig:
        """From a FunASR ``config.yaml``: its ``encoder_conf`` and ``input_size`` (the LFR width)."""
        return cls(input_size=input_size, output_size=int(encoder_conf.get("output_size", 512)),
                   attention_heads=int(encoder_conf.get("attention_heads", 4)),
                   linear_units=int(encoder_conf.get("linear_units", 2048)),
                   num_blocks=int(encoder_conf.get("num_blocks", 50)),
                   kernel_size=int(encoder_conf.get("kernel_size", 11)),
                   sanm_shfit=int(encoder_conf.get("sanm_shfit", 0)))


@dataclass(frozen=True)
class ChunkConfig:
    """The streaming configuration the reference passes (``chunk_size=[0, 4, 5]``, look-back 4, SPEC §3.1)."""

    left: int = 0
    chunk_frames: int = 4  # new LFR rows per call
    lookahead: int = 5
    look_back: int = 4  # encoder_chunk_look_back, in chunks

    @property
    def overlap(self) -> int:
        """Rows of the previous window carried into the next."""
        return self.left + self.lookahead

    @property
    def kv_rows(self) -> int:
        return self.look_back * self.chunk_frames


def sinusoidal_code(positions: torch.Tensor, depth: int) -> torch.Tensor:
    """FunASR ``SinusoidalPositionEncoder``: [sin(p * inv), cos(p * inv)], inv_i = 10000^(-i / (depth/2 - 1))."""
    half = depth // 2
    increment = math.log(10000.0) / (half - 1)
    inv = torch.exp(torch.arange(half, dtype=torch.float32, device=positions.device) * -increment)
    scaled = positions.to(torch.float32).unsqueeze(-1) * inv
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)


@dataclass
class EncoderStreamState:
    """What one utterance's encoder keeps between calls (batch-first tensors)."""

    frames_seen: int = 0
    overlap: torch.Tensor | None = None  # [B, overlap, input_size], scaled + position-coded rows
    keys: list[torch.Tensor | None] = field(default_factory=list)  # per block [B, H, rows, d_k]
    values: list[torch.Tensor | None] = field(default_factory=list)


class FeedForward(nn.Module):
    def __init__(self, size: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class SANMAttention(nn.Module):
    """Multi-head attention with an FSMN memory on the values (``MultiHeadedAttentionSANM``, chunk form)."""

    def __init__(self, in_size: int, size: int, heads: int, kernel_size: int, shift: int) -> None:
        super().__init__()
        self.heads, self.d_k = heads, size // heads
        self.linear_q_k_v = nn.Linear(in_size, 3 * size)
        self.linear_out = nn.Linear(size, size)
        self.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        left = (kernel_size - 1) // 2 + shift
        self.fsmn_pad = (left, kernel_size - 1 - left)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.d_k).transpose(1, 2)

    def forward(self, u: torch.Tensor, cache: tuple[torch.Tensor | None, torch.Tensor | None],
                chunk: ChunkConfig) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        q, k, v = self.linear_q_k_v(u).chunk(3, dim=-1)
        memory = self.fsmn_block(F.pad(v.transpose(1, 2), self.fsmn_pad)).transpose(1, 2) + v
        q_h, k_h, v_h = self._heads(q), self._heads(k), self._heads(v)
        cached_k, cached_v = cache
        leaving_k, leaving_v = k_h[:, :, : -chunk.lookahead], v_h[:, :, : -chunk.lookahead]
        if cached_k is None:
            new_cache = (leaving_k, leaving_v)
        else:
            k_h, v_h = torch.cat([cached_k, k_h], dim=2), torch.cat([cached_v, v_h], dim=2)
            new_cache = (torch.cat([cached_k, leaving_k], dim=2)[:, :, -chunk.kv_rows:],
                         torch.cat([cached_v, leaving_v], dim=2)[:, :, -chunk.kv_rows:])
        scores = (q_h * self.d_k ** -0.5) @ k_h.transpose(-2, -1)
        attended = torch.softmax(scores, dim=-1) @ v_h
        b, _, t, _ = attended.shape
        attended = attended.transpose(1, 2).reshape(b, t, self.heads * self.d_k)
        return self.linear_out(attended) + memory, new_cache


class SANMBlock(nn.Module):
    """Pre-norm ``EncoderLayerSANM``; the attention residual exists only when in and out widths agree."""

    def __init__(self, in_size: int, config: SANMEncoderConfig) -> None:
        super().__init__()
        size = config.output_size
        self.norm1 = nn.LayerNorm(in_size, eps=LAYER_NORM_EPS)
        self.self_attn = SANMAttention(in_size, size, config.attention_heads, config.kernel_size, config.sanm_shfit)
        self.norm2 = nn.LayerNorm(size, eps=LAYER_NORM_EPS)
        self.feed_forward = FeedForward(size, config.linear_units)
        self.residual = in_size == size

    def forward(self, x: torch.Tensor, cache, chunk: ChunkConfig):
        h, cache = self.self_attn(self.norm1(x), cache, chunk)
        h = x + h if self.residual else h
        return h + self.feed_forward(self.norm2(h)), cache


class SANMEncoderChunkOpt(nn.Module):
    """The encoder's chunk step; parameter names follow FunASR (``encoders0.0``, ``encoders.i``, ``after_norm``)."""

    def __init__(self, config: SANMEncoderConfig | None = None, chunk: ChunkConfig | None = None) -> None:
        super().__init__()
        self.config = config or SANMEncoderConfig()
        self.chunk = chunk or ChunkConfig()
        c = self.config
        self.encoders0 = nn.ModuleList([SANMBlock(c.input_size, c)])
        self.encoders = nn.ModuleList([SANMBlock(c.output_size, c) for _ in range(c.num_blocks - 1)])
        self.after_norm = nn.LayerNorm(c.output_size, eps=LAYER_NORM_EPS)

    def blocks(self) -> list[SANMBlock]:
        return [*self.encoders0, *self.encoders]

    def new_state(self) -> EncoderStreamState:
        n = len(self.blocks())
        return EncoderStreamState(keys=[None] * n, values=[None] * n)

    def forward_chunk(self, feats: torch.Tensor, state: EncoderStreamState) -> torch.Tensor:
        """[B, k, input_size] new CMVN'd LFR rows -> [B, overlap + k, output_size] window rows (state updated)."""
        c, chunk = self.config, self.chunk
        param = self.after_norm.weight
        x = feats.to(device=param.device, dtype=param.dtype) * math.sqrt(c.output_size)
        k = x.shape[1]
        positions = torch.arange(state.frames_seen + 1, state.frames_seen + k + 1, device=x.device)
        x = x + sinusoidal_code(positions, c.input_size).to(x.dtype)
        if state.overlap is None:
            state.overlap = x.new_zeros(x.shape[0], chunk.overlap, c.input_size)
        window = torch.cat([state.overlap, x], dim=1)
        state.overlap = window[:, -chunk.overlap:]
        state.frames_seen += k
        h = window
        for i, block in enumerate(self.blocks()):
            h, (state.keys[i], state.values[i]) = block(h, (state.keys[i], state.values[i]), chunk)
        return self.after_norm(h)
