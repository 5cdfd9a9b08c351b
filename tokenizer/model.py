"""The Step-Audio dual-codebook tokenizer in torch: both streams causal, streamable in batch slots.

- Linguistic stream, 16.7 Hz, 1024 codes: 80-bin log-mel -> Paraformer-style low-frame-rate stacking
  (a causal conv of kernel 7, stride 6: 100 Hz -> 16.7 Hz) -> causal transformer -> nearest centroid.
  (In Step-Audio this is a Paraformer ASR encoder; `tokenizer.whisper_linguistic` is the variant that
  runs today on the embedded Whisper encoder, per utterance.)
- Semantic stream, 25 Hz, 4096 codes: 128-bin log-mel -> two causal stride-2 convs (100 -> 25 Hz) ->
  causal transformer -> nearest centroid (CosyVoice-style supervised semantic tokens).

Audio is consumed in whole 120 ms groups (1920 samples = 12 mel frames = 2 linguistic + 3 semantic
tokens). Streaming buffers the partial group; `flush` zero-pads it, exactly as offline encoding pads
the end of the utterance, so the concatenated streamed codes equal the offline ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.codebook import NearestCentroidCodebook
from tokenizer.features import LogMel
from voxcore.checkpoint import load_config, load_weights, save_checkpoint, seeded_init
from voxcore.interleave import GROUP_MS, LING_PER_GROUP, SEM_PER_GROUP, STEP_AUDIO_LAYOUT, AudioTokenLayout, interleave
from voxcore.streaming import (CausalTransformer, LeafStates, StreamingConv1d, bind_state_keys, init_states,
                               reset_slots)

ARCHITECTURE = "voxline.DualCodebookTokenizer"


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture sizes (saved as config.json next to the weights)."""

    sample_rate: int = 16000
    hop: int = 160  # 10 ms mel frames
    n_fft: int = 400
    linguistic_mels: int = 80
    linguistic_dim: int = 512
    linguistic_layers: int = 6
    linguistic_heads: int = 8
    linguistic_window: int = 64  # tokens of attention context (3.8 s at 16.7 Hz)
    linguistic_codes: int = 1024
    semantic_mels: int = 128
    semantic_dim: int = 512
    semantic_layers: int = 6
    semantic_heads: int = 8
    semantic_window: int = 96  # tokens of attention context (3.8 s at 25 Hz)
    semantic_codes: int = 4096

    def __post_init__(self) -> None:
        frames = self.group_samples // self.hop
        if frames * self.hop != self.group_samples or frames % (LING_PER_GROUP * SEM_PER_GROUP):
            raise ValueError(f"a {GROUP_MS} ms group must be a whole number of hops divisible by 6; "
                             f"sample_rate={self.sample_rate}, hop={self.hop} give {self.group_samples / self.hop}")

    @property
    def group_samples(self) -> int:
        return self.sample_rate * GROUP_MS // 1000

    @property
    def group_frames(self) -> int:
        return self.group_samples // self.hop

    @classmethod
    def tiny(cls) -> "TokenizerConfig":
        """Small sizes for tests and mechanics benchmarks (full codebook sizes: the id layout needs them)."""
        return cls(linguistic_dim=32, linguistic_layers=2, linguistic_heads=2, linguistic_window=16,
                   semantic_dim=32, semantic_layers=2, semantic_heads=2, semantic_window=24)


class LinguisticEncoder(nn.Module):
    """80-bin log-mel [B, 80, 12G] -> features [B, 2G, D] at 16.7 Hz."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        stride = cfg.group_frames // LING_PER_GROUP  # 6: Paraformer's LFR (stack 7, skip 6)
        self.lfr = StreamingConv1d(cfg.linguistic_mels, cfg.linguistic_dim, stride + 1, stride=stride)
        self.conv = StreamingConv1d(cfg.linguistic_dim, cfg.linguistic_dim, 3)
        self.transformer = CausalTransformer(cfg.linguistic_dim, cfg.linguistic_layers,
                                             cfg.linguistic_heads, cfg.linguistic_window)

    def forward(self, mel: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        x = F.gelu(self.lfr(mel, states))  # [B, D, 2G]
        x = x + F.gelu(self.conv(x, states))
        return self.transformer(x.transpose(1, 2), states)  # [B, 2G, D]


class SemanticEncoder(nn.Module):
    """128-bin log-mel [B, 128, 12G] -> features [B, 3G, D] at 25 Hz."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        stride = cfg.group_frames // SEM_PER_GROUP  # 4 = 2 x 2, Whisper-style conv front end
        self.conv1 = StreamingConv1d(cfg.semantic_mels, cfg.semantic_dim, 3, stride=2)
        self.conv2 = StreamingConv1d(cfg.semantic_dim, cfg.semantic_dim, 3, stride=stride // 2)
        self.transformer = CausalTransformer(cfg.semantic_dim, cfg.semantic_layers,
                                             cfg.semantic_heads, cfg.semantic_window)

    def forward(self, mel: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel, states)), states))  # [B, D, 3G]
        return self.transformer(x.transpose(1, 2), states)  # [B, 3G, D]


@dataclass
class TokenizerOutput:
    """Codes and the pre-quantisation features they came from."""

    linguistic: torch.Tensor  # [B, 2G] long, in [0, linguistic_codes)
    semantic: torch.Tensor  # [B, 3G] long, in [0, semantic_codes)
    linguistic_features: torch.Tensor  # [B, 2G, D_l]
    semantic_features: torch.Tensor  # [B, 3G, D_s]

    def ids(self, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> torch.Tensor:
        """Interleaved LLM ids [B, 5G]."""
        return interleave(self.linguistic, self.semantic, layout)


@dataclass
class TokenizerState:
    """Per-session streaming state; every tensor has a leading slot dimension B."""

    layers: LeafStates  # conv histories, mel windows, KV caches, positions
    pending: torch.Tensor  # [B, p] samples of the incomplete group, p < group_samples (shared by slots)

    def reset(self, mask: torch.Tensor) -> None:
        """Start new sessions in slots `mask` [B]. Slots step in lockstep, so a reset must fall on a
        group boundary (no pending samples); feed audio in multiples of 120 ms, or give each session
        its own B=1 state, if sessions join at arbitrary times."""
        if self.pending.shape[-1]:
            raise ValueError(f"cannot reset a slot with {self.pending.shape[-1]} samples pending: "
                             "reset on a 120 ms boundary or call flush() first")
        reset_slots(self.layers, mask)


class DualCodebookTokenizer(nn.Module):
    """Audio [B, n] at 16 kHz -> linguistic [B, 2G] + semantic [B, 3G] codes, offline or streamed."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.linguistic_mel = LogMel(cfg.linguistic_mels, cfg.sample_rate, cfg.n_fft, cfg.hop)
        self.semantic_mel = LogMel(cfg.semantic_mels, cfg.sample_rate, cfg.n_fft, cfg.hop)
        self.linguistic = LinguisticEncoder(cfg)
        self.semantic = SemanticEncoder(cfg)
        self.linguistic_codebook = NearestCentroidCodebook(cfg.linguistic_codes, cfg.linguistic_dim)
        self.semantic_codebook = NearestCentroidCodebook(cfg.semantic_codes, cfg.semantic_dim)
        bind_state_keys(self)

    # ------------------------------------------------------------------ construction and checkpoints
    @classmethod
    def tiny(cls, seed: int = 0) -> "DualCodebookTokenizer":
        """Random weights at tiny sizes, reproducible from `seed` (mechanics only, never quality)."""
        return cls.random(TokenizerConfig.tiny(), seed)

    @classmethod
    def random(cls, cfg: TokenizerConfig, seed: int = 0) -> "DualCodebookTokenizer":
        with seeded_init(seed):
            model = cls(cfg)
            # Random directions at the norm of a LayerNorm output (sqrt(D)): with equal norms the
            # nearest centroid is the best-aligned one, so random features spread over many codes.
            for book in (model.linguistic_codebook, model.semantic_codebook):
                c = torch.randn_like(book.centroids)
                book.centroids.data.copy_(c / c.norm(dim=-1, keepdim=True) * c.shape[-1] ** 0.5)
        return model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DualCodebookTokenizer":
        model = cls(load_config(directory, TokenizerConfig, ARCHITECTURE))
        return load_weights(model, directory).eval()

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_checkpoint(self, self.cfg, directory, ARCHITECTURE)

    # ---------------------------------------------------------------------------------- streaming
    def init_state(self, batch: int = 1) -> TokenizerState:
        device = self.semantic_codebook.centroids.device
        return TokenizerState(init_states(self, batch, device),
                              torch.zeros(batch, 0, device=device))

    @torch.inference_mode()
    def forward(self, audio: torch.Tensor, state: TokenizerState | None = None) -> TokenizerOutput:
        """Offline (state=None): audio [B, n] zero-padded to whole groups -> codes for ceil(n/1920) groups.
        Streaming: codes for the groups this chunk completes; the remainder waits in `state.pending`."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be [B, n], got shape {tuple(audio.shape)}")
        g = self.cfg.group_samples
        audio = audio.to(torch.float32)
        if state is None:
            return self._encode_groups(F.pad(audio, (0, -audio.shape[-1] % g)), None)
        if audio.shape[0] != state.pending.shape[0]:
            raise ValueError(f"chunk has {audio.shape[0]} slots, state has {state.pending.shape[0]}")
        buffered = torch.cat([state.pending, audio], dim=-1)
        whole = buffered.shape[-1] - buffered.shape[-1] % g
        state.pending = buffered[:, whole:]
        return self._encode_groups(buffered[:, :whole], state.layers)

    def flush(self, state: TokenizerState) -> TokenizerOutput:
        """End of utterance: zero-pad the pending samples to one group and encode it."""
        g = self.cfg.group_samples
        tail = F.pad(state.pending, (0, -state.pending.shape[-1] % g))
        state.pending = tail[:, :0]
        with torch.inference_mode():
            return self._encode_groups(tail, state.layers)

    def _encode_groups(self, audio: torch.Tensor, states: LeafStates | None) -> TokenizerOutput:
        """audio [B, 1920 G] -> TokenizerOutput with 2G / 3G codes."""
        if audio.shape[-1] == 0:
            B, cfg = audio.shape[0], self.cfg
            empty = audio.new_zeros(B, 0, dtype=torch.long)
            return TokenizerOutput(empty, empty, audio.new_zeros(B, 0, cfg.linguistic_dim),
                                   audio.new_zeros(B, 0, cfg.semantic_dim))
        ling = self.linguistic(self.linguistic_mel(audio, states), states)  # [B, 2G, D_l]
        sem = self.semantic(self.semantic_mel(audio, states), states)  # [B, 3G, D_s]
        return TokenizerOutput(self.linguistic_codebook(ling), self.semantic_codebook(sem), ling, sem)
