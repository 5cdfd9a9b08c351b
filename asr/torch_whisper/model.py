"""Whisper (encoder + decoder) in plain torch, loaded from the embedded CTranslate2 weights.

Same computation as openai/whisper ``whisper/model.py``; the layout follows CTranslate2's fused
projections (self-attention ``qkv``, cross-attention ``q`` and ``kv``) because fewer, larger matmuls
are what a CPU wants at batch 1. The decoder runs either offline (``cache=None``: causal attention over
the given tokens, used for training) or against a :class:`DecoderCache` allocated once per utterance:
new keys/values are written at ``start .. start+T-1`` and queries attend to cached positions ``<=`` their
own. Entries past the decoded length are stale and never read, so rolling back rejected draft tokens is
only a change of the caller's length. Cross-attention keys/values are computed once per utterance
(:meth:`TextDecoder.cross_kv`).

The model is plain: decoding policy lives in :mod:`.decode` and :mod:`.mtp`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class WhisperDims:
    """Architecture sizes; they travel with the checkpoint (read from tensor shapes)."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "WhisperDims":
        def count(prefix: str) -> int:
            return len({k.split(".")[2] for k in sd if k.startswith(prefix)})

        n_audio_ctx, n_audio_state = sd["encoder.positional_embedding"].shape
        n_vocab, n_text_state = sd["decoder.token_embedding.weight"].shape
        return cls(n_mels=sd["encoder.conv1.weight"].shape[1], n_audio_ctx=n_audio_ctx, n_audio_state=n_audio_state,
                   n_audio_head=int(sd["dims.n_audio_head"]), n_audio_layer=count("encoder.blocks."),
                   n_vocab=n_vocab, n_text_ctx=sd["decoder.positional_embedding"].shape[0],
                   n_text_state=n_text_state, n_text_head=int(sd["dims.n_text_head"]),
                   n_text_layer=count("decoder.blocks."))


@dataclass
class DecoderCache:
    """Self-attention KV ``k, v [L, B, H, S, Dh]``; cross-attention ``cross_k [L, B, H, Dh, A]`` (transposed)
    and ``cross_v [L, B, H, A, Dh]``."""

    k: torch.Tensor
    v: torch.Tensor
    cross_k: torch.Tensor
    cross_v: torch.Tensor

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, Dh]."""
    b, t, d = x.shape
    return x.view(b, t, n_head, d // n_head).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, Dh] -> [B, T, D]."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, causal: bool, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                start: int = 0) -> torch.Tensor:
        """x [B, T, D]; with ``cache`` (k, v [B, H, S, Dh]) the new entries go to ``start .. start+T-1``."""
        q, k, v = (_heads(t, self.n_head) for t in self.qkv(x).chunk(3, dim=-1))
        if cache is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        else:
            t = x.shape[1]
            ck, cv = cache
            ck[:, :, start:start + t] = k
            cv[:, :, start:start + t] = v
            k, v = ck[:, :, :start + t], cv[:, :, :start + t]
            mask = None
            if t > 1:  # query i (position start+i) sees keys 0 .. start+i
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(_merge(o))


class CrossAttention(nn.Module):
    """Queries from the text, keys/values from the audio (projected once per utterance by :meth:`project_kv`).

    Keys are kept transposed (``k_t [B, H, Dh, A]``): at a handful of queries against 1500 audio frames the
    score product is then a plain batched matmul over contiguous rows, ~1.5x faster on CPU than SDPA.
    """

    def __init__(self, d: int, n_head: int, with_kv: bool = True) -> None:
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d) if with_kv else None
        self.out = nn.Linear(d, d)

    def project_kv(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, A, D] -> k_t [B, H, Dh, A], v [B, H, A, Dh]."""
        k, v = self.kv(audio).chunk(2, dim=-1)
        return _heads(k, self.n_head).transpose(-1, -2).contiguous(), _heads(v, self.n_head).contiguous()

    def forward(self, x: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = _heads(self.q(x), self.n_head)                                     # [B, H, T, Dh]
        scores = (q * q.shape[-1] ** -0.5) @ k_t                               # [B, H, T, A]
        return self.out(_merge(scores.softmax(-1) @ v))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.attn_ln, self.attn = nn.LayerNorm(d), SelfAttention(d, n_head)
        self.mlp_ln, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), causal=False)
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class DecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the audio, GELU MLP."""

    def __init__(self, d: int, n_head: int, cross_kv: bool = True) -> None:
        super().__init__()
        self.attn_ln, self.attn = nn.LayerNorm(d), SelfAttention(d, n_head)
        self.cross_ln, self.cross = nn.LayerNorm(d), CrossAttention(d, n_head, with_kv=cross_kv)
        self.mlp_ln, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), causal=True, cache=cache, start=start)
        x = x + self.cross(self.cross_ln(x), cross_k, cross_v)
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class AudioEncoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(EncoderBlock(d, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, 2*A] (30 s: 3000 frames) -> audio states [B, A, D]."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class TiedHead(nn.Module):
    """Output projection tied to the token embedding (holds no weights of its own; swappable from outside)."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self._embedding = [embedding]  # a list: not a submodule, so the weight is not registered twice

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self._embedding[0].weight.T


class TextDecoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        d = dims.n_text_state
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, d))
        self.blocks = nn.ModuleList(DecoderBlock(d, dims.n_text_head) for _ in range(dims.n_text_layer))
        self.ln = nn.LayerNorm(d)
        self.head = TiedHead(self.token_embedding)

    def cross_kv(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, A, D] -> per-layer cross keys k_t [L, B, H, Dh, A] and values v [L, B, H, A, Dh]."""
        kvs = [blk.cross.project_kv(audio) for blk in self.blocks]
        return torch.stack([k for k, _ in kvs]), torch.stack([v for _, v in kvs])

    def forward(self, tokens: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor,
                cache: DecoderCache | None = None, start: int = 0) -> torch.Tensor:
        """tokens [B, T] at positions ``start ..`` -> hidden [B, T, D] after the final norm."""
        t = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[start:start + t]
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            x = block(x, cross_k[i], cross_v[i], layer_cache, start)
        return self.ln(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> [..., V] (the output projection is the token embedding, as in Whisper)."""
        return self.head(hidden)


class Whisper(nn.Module):
    """Encoder + decoder. ``Whisper.load("whisper-base")`` converts the embedded model once and caches it."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    @classmethod
    def from_file(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "Whisper":
        from safetensors.torch import load_file

        sd = load_file(str(path))
        dims = WhisperDims.from_state_dict(sd)
        model = cls(dims)
        model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("dims.")}, strict=True)
        return model.to(dtype).eval().requires_grad_(False)

    @classmethod
    def load(cls, name: str = "whisper-base", dtype: torch.dtype = torch.float32) -> "Whisper":
        from asr.torch_whisper.convert import converted_path

        return cls.from_file(converted_path(name), dtype)

    def new_cache(self, cross_k: torch.Tensor, cross_v: torch.Tensor, capacity: int | None = None) -> DecoderCache:
        """An empty self-attention cache for ``cross_k.shape[1]`` utterances, around their cross K/V."""
        d = self.dims
        _, b, h, dh, _ = cross_k.shape
        shape = (d.n_text_layer, b, h, capacity or d.n_text_ctx, dh)
        # Uninitialised on purpose: attention only ever reads positions it has written.
        return DecoderCache(cross_k.new_empty(shape), cross_k.new_empty(shape), cross_k, cross_v)
