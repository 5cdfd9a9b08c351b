"""Step-Audio 2's audio encoder (Whisper-large-v3-like, golden SPEC.md §4) and adapter (§5), with their lengths (§3).

mel (B, n_mels, T) -> conv1+GELU -> conv2 (stride 2)+GELU -> + learned positions -> pre-norm blocks -> AvgPool(2)
-> after_norm -> (B, T'', W); the adapter halves the time again and maps to the LLM width. Module and parameter
names are the official ones (``encoder.conv1``, ``encoder.blocks.N.attn.query`` ..., ``adapter.linear1`` ...).

Two reference quirks are kept on purpose, since the checkpoint was trained with them:

* the key padding mask keeps every second frame of "index < length" starting at (T + 1) mod 2, where T is the
  *padded batch* length, so one clip's mask depends on the batch it is in (§4 step 4);
* q and k are each scaled by d^-1/4 (not the logits by d^-1/2), and the softmax runs in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.step_audio2.config import AudioEncoderConfig

MASK_VALUE = -1e10     # added to masked key logits (the reference's value)


def encoder_input_lengths(frames: torch.Tensor | int) -> torch.Tensor | int:
    """Mel frames -> the length the encoder is given: frames - 2 ("removes the padding", §3)."""
    return frames - 2


def encoder_output_lengths(lengths: torch.Tensor | int) -> torch.Tensor | int:
    """Encoder input length -> valid output rows after conv2 and the pool: (length + 1) // 2 // 2 (§4 step 8)."""
    return (lengths + 1) // 2 // 2


def adapter_output_lengths(lengths: torch.Tensor | int, kernel_size: int = 3, stride: int = 2) -> torch.Tensor | int:
    """Encoder output rows -> adapter rows: the conv's length formula, (L - 1) // 2 + 1 for k3 s2 p1 (§5)."""
    pad = (kernel_size - 1) // 2
    return (lengths + 2 * pad - kernel_size) // stride + 1


def num_audio_tokens(frames: torch.Tensor | int, kernel_size: int = 3, stride: int = 2) -> torch.Tensor | int:
    """Mel frames of one clip -> its ``<audio_patch>`` count n = ((frames - 2 + 1) // 4 - 1) // 2 + 1 (§3)."""
    return adapter_output_lengths(encoder_output_lengths(encoder_input_lengths(frames)), kernel_size, stride)


def key_padding_mask(lengths: torch.Tensor, padded_frames: int) -> torch.Tensor:
    """Valid keys after conv2, bool [B, T'], by the reference's rule (see the module docstring)."""
    frames = torch.arange(padded_frames, device=lengths.device)
    valid = frames[None, :] < lengths[:, None]                                  # [B, T]
    return valid[:, (padded_frames + 1) % 2::2]


class EncoderAttention(nn.Module):
    """Bidirectional multi-head attention; key has no bias (Whisper)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, T, W], bias [B, 1, 1, T] (0 or MASK_VALUE) -> [B, T, W]."""
        b, t, w = x.shape
        d = w // self.heads
        scale = d ** -0.25
        q = (self.query(x) * scale).view(b, t, self.heads, d).transpose(1, 2)   # [B, H, T, d]
        k = (self.key(x) * scale).view(b, t, self.heads, d).transpose(1, 2)
        v = self.value(x).view(b, t, self.heads, d).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)).float() + bias                       # [B, H, T, T] fp32
        weights = logits.softmax(dim=-1).to(v.dtype)
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, w))


class EncoderBlock(nn.Module):
    """Pre-norm residual block: x += attn(attn_ln(x)); x += mlp(mlp_ln(x)); LayerNorm eps 1e-5."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = EncoderAttention(width, heads)
        self.attn_ln = nn.LayerNorm(width, eps=1e-5)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mlp_ln = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """mel [B, n_mels, T] and encoder lengths [B] (frames - 2) -> hidden [B, T'', W] and valid rows [B]."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        w = cfg.n_audio_state
        self.conv1 = nn.Conv1d(cfg.n_mels, w, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(w, w, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(cfg.n_audio_ctx, w)
        self.blocks = nn.ModuleList(EncoderBlock(w, cfg.n_audio_head) for _ in range(cfg.n_audio_layer))
        self.after_norm = nn.LayerNorm(w, eps=1e-5)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padded = mel.shape[-1]
        dtype = self.conv1.weight.dtype
        x = F.gelu(self.conv1(mel.to(dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)                                # [B, T', W]
        t = x.shape[1]
        if t > self.positional_embedding.num_embeddings:
            raise ValueError(f"audio of {padded} mel frames gives {t} encoder positions, more than the "
                             f"{self.positional_embedding.num_embeddings} the positional table holds; slice it")
        x = x + self.positional_embedding.weight[:t]
        valid = key_padding_mask(lengths.to(mel.device), padded)                  # [B, T']
        bias = torch.zeros(valid.shape, dtype=torch.float32, device=x.device).masked_fill(~valid, MASK_VALUE)
        bias = bias[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        x = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)  # [B, T'', W]
        return self.after_norm(x), encoder_output_lengths(lengths)


class Adapter(nn.Module):
    """Encoder hidden [B, T'', W] -> LLM rows [B, T''', llm_dim]: conv (stride 2) + GELU, linear1, ReLU, linear2."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.kernel_size, self.stride = cfg.kernel_size, cfg.adapter_stride
        w = cfg.n_audio_state
        self.conv = nn.Conv1d(w, w, cfg.kernel_size, stride=cfg.adapter_stride, padding=(cfg.kernel_size - 1) // 2)
        self.linear1 = nn.Linear(w, cfg.adapter_hidden)
        self.linear2 = nn.Linear(cfg.adapter_hidden, cfg.llm_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        x = self.linear2(F.relu(self.linear1(x)))
        return x, adapter_output_lengths(lengths, self.kernel_size, self.stride)
