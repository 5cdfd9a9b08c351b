"""S3 tokenizer v1 (Step-Audio v1's semantic stream "vq06", CosyVoice v1's 25 Hz tokenizer): log-mel -> 4096 codes.

SPEC1 §4: the same conv front as v2 (stride 2, 2) to 25 Hz, then a fixed sinusoid table added (rows 0..T−1 of
1500 × W; derived, not stored), pre-norm blocks with plain attention (no rotary, no FSMN, no final LayerNorm), then
vector quantisation: x̂ = x / ‖x‖₂ and the nearest row of the (unnormalised) 4096 × W codebook
`quantizer._codebook.embed` by squared distance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.s3.blocks import ConvFront, ResidualBlock, S3Config, S3Tokenizer, attention_masks, sinusoids

V1_CODEBOOK_SIZE = 4096


class EncoderV1(ConvFront):
    """mel [B, n_mels, T], lens [B] -> hidden [B, T/4, W] (before the VQ), lens [B]."""

    def __init__(self, cfg: S3Config) -> None:
        super().__init__(cfg)
        self.n_ctx, self.width = cfg.n_audio_ctx, cfg.n_audio_state
        self.blocks = nn.ModuleList(ResidualBlock(cfg, fsmn=False, rotary=False) for _ in range(cfg.n_audio_layer))
        self.derive_buffers()

    def derive_buffers(self) -> None:
        # Derived from the sizes alone; an official file's copy is checked against it by the loader.
        self.register_buffer("positional_embedding", sinusoids(self.n_ctx, self.width), persistent=False)

    def forward(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.conv_front(mel, lens)
        if x.shape[1] > self.n_ctx:
            raise ValueError(f"S3 v1 holds at most {self.n_ctx} frames after the convs, got {x.shape[1]}")
        x = x + self.positional_embedding[:x.shape[1]].to(x.dtype)
        key_bias, frame_mask = attention_masks(lens, x.shape[1], x.dtype)
        for block in self.blocks:
            x = block(x, key_bias, frame_mask)
        return x, lens


class EuclideanCodebook(nn.Module):
    """`embed` [codes, W]: the file's `quantizer._codebook.embed`."""

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.empty(size, width), requires_grad=False)


class VectorQuantizer(nn.Module):
    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(size, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, W] -> codes [B, T] int64: argmin_j ‖x̂‖² − 2 x̂·E_j + ‖E_j‖², in float32."""
        x = F.normalize(hidden.float(), p=2.0, dim=-1)
        embed = self._codebook.embed.float()
        dist = x.pow(2).sum(-1, keepdim=True) - 2.0 * x @ embed.t() + embed.pow(2).sum(-1)[None, None, :]
        return dist.argmin(dim=-1).to(torch.int64)


class S3TokenizerV1(nn.Module, S3Tokenizer):
    """The torch port: `encoder` + `quantizer`, state-dict names as the reference's; API of blocks.S3Tokenizer."""

    version = "v1"

    def __init__(self, cfg: S3Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or S3Config(n_codebook_size=V1_CODEBOOK_SIZE)
        self.n_mels, self.conv1_stride = self.cfg.n_mels, self.cfg.conv1_stride
        self.encoder = EncoderV1(self.cfg)
        self.quantizer = VectorQuantizer(self.cfg.n_codebook_size, self.cfg.n_audio_state)

    def forward(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of ≤30 s mels -> (codes [B, T'], lens [B]); what the ONNX export traces."""
        hidden, lens = self.encoder(mel, lens)
        return self.quantizer(hidden), lens

    @torch.inference_mode()
    def encode_codes(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.quantizer._codebook.embed
        return self(mel.to(weight.device, weight.dtype), torch.as_tensor(lens).to(weight.device, torch.int64))
