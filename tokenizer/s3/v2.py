"""S3TokenizerV2 (Step-Audio 2's voice-prompt tokenizer, CosyVoice2's speech tokenizer): log-mel -> 6561 FSQ codes.

SPEC2 §8: conv front (stride 2, 2) to 25 Hz, pre-norm blocks with rotary attention and an FSMN memory, no final
LayerNorm, no positional table; then FSQ — Linear(W→8), tanh, ×0.999, round to {−1, 0, 1}, +1, read as 8 base-3
digits (digit i weighs 3^i). Module names are the reference's (`encoder.*`, `quantizer._codebook.project_down`).
"""

from __future__ import annotations

import torch
from torch import nn

from tokenizer.s3.blocks import ConvFront, ResidualBlock, S3Config, S3Tokenizer, attention_masks

FSQ_DIGITS = 8
FSQ_SHRINK = 0.999  # the reference's factor: it moves the rounding edges to tanh = ±0.5005, so it changes codes


class EncoderV2(ConvFront):
    """mel [B, n_mels, T], lens [B] -> hidden [B, T/4, W], lens [B] (rows past a length are computed on padding)."""

    def __init__(self, cfg: S3Config) -> None:
        super().__init__(cfg)
        self.blocks = nn.ModuleList(ResidualBlock(cfg, fsmn=True, rotary=True) for _ in range(cfg.n_audio_layer))

    def forward(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.conv_front(mel, lens)
        key_bias, frame_mask = attention_masks(lens, x.shape[1], x.dtype)
        for block in self.blocks:
            x = block(x, key_bias, frame_mask)
        return x, lens


class FSQCodebook(nn.Module):
    """Holds `project_down` (the file's `quantizer._codebook.project_down.*`) and the base-3 digit weights."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project_down = nn.Linear(width, FSQ_DIGITS)
        self.derive_buffers()

    def derive_buffers(self) -> None:
        self.register_buffer("digit_weights", 3.0 ** torch.arange(FSQ_DIGITS, dtype=torch.float32), persistent=False)


class FSQQuantizer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self._codebook = FSQCodebook(width)

    def tanh_projection(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., W] -> [..., 8] in (−1, 1): the golden `fsq_tanh` (before ×0.999)."""
        return torch.tanh(self._codebook.project_down(hidden))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, W] -> codes [B, T] int64 in [0, 6560]."""
        digits = torch.round(self.tanh_projection(hidden).float() * FSQ_SHRINK) + 1.0
        return (digits * self._codebook.digit_weights).sum(-1).to(torch.int64)


class S3TokenizerV2(nn.Module, S3Tokenizer):
    """The torch port: `encoder` + `quantizer`, state-dict names as the reference's; API of blocks.S3Tokenizer."""

    version = "v2"

    def __init__(self, cfg: S3Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or S3Config()
        if self.cfg.n_codebook_size != 3 ** FSQ_DIGITS:
            raise ValueError(f"S3 v2's FSQ has 3^8 = 6561 codes, config says {self.cfg.n_codebook_size}")
        self.n_mels, self.conv1_stride = self.cfg.n_mels, self.cfg.conv1_stride
        self.encoder = EncoderV2(self.cfg)
        self.quantizer = FSQQuantizer(self.cfg.n_audio_state)

    def forward(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of ≤30 s mels -> (codes [B, T'], lens [B]); what the ONNX export traces."""
        hidden, lens = self.encoder(mel, lens)
        return self.quantizer(hidden), lens

    @torch.inference_mode()
    def encode_codes(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.quantizer._codebook.project_down.weight
        return self(mel.to(weight.device, weight.dtype), torch.as_tensor(lens).to(weight.device, torch.int64))
