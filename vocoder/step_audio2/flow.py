"""The Step-Audio 2 token2wav flow model and its offline inference (SPEC2 §9).

Module tree = the official ``flow.pt`` names: ``input_embedding`` (codes -> D), ``spk_embed_affine_layer``
(L2-normalised 192-d speaker vector -> 80), ``encoder`` (:class:`UpsampleConformerEncoderV2`, 25 -> 50 Hz),
``encoder_proj`` (D -> 80, gives mu) and ``decoder.estimator`` (:class:`DiT`). The CFM noise buffer is derived,
not loaded (the reference draws it at construction); every inference call can be handed another one.

The model is read-only at inference: offline calls keep no state, and a stream keeps its caches in its own
:class:`~vocoder.step_audio2.flow_stream.FlowStreamState`, so one loaded model serves many sessions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vocoder.step_audio2.cfm import cfg_euler, cosine_t_span, default_noise
from vocoder.step_audio2.dit import DiT
from vocoder.step_audio2.flow_encoder import UpsampleConformerEncoderV2


class FlowDecoder(nn.Module):
    """Holds the estimator (``decoder.estimator.*``) and the sampler's settings."""

    def __init__(self, estimator: DiT, cfg_rate: float = 0.7, n_timesteps: int = 10) -> None:
        super().__init__()
        self.estimator = estimator
        self.cfg_rate = cfg_rate
        self.n_timesteps = n_timesteps


class StepAudio2Flow(nn.Module):
    def __init__(self, input_embedding: nn.Module, encoder: UpsampleConformerEncoderV2, estimator: DiT,
                 spk_embed_dim: int = 192, output_size: int = 80, cfg_rate: float = 0.7,
                 n_timesteps: int = 10) -> None:
        super().__init__()
        self.output_size = output_size
        self.input_embedding = input_embedding
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, output_size)
        self.encoder = encoder
        self.encoder_proj = nn.Linear(encoder.output_size, output_size)
        self.decoder = FlowDecoder(estimator, cfg_rate, n_timesteps)
        self.derive_buffers()

    def derive_buffers(self) -> None:
        # Drawn on the CPU whatever the build device, so every device starts from the reference's numbers.
        self.register_buffer("rand_noise", default_noise(self.output_size), persistent=False)

    @property
    def frames_per_code(self) -> int:
        return self.encoder.up_stride

    # ------------------------------------------------------------------------------------------ pieces
    def speaker_projection(self, spk_emb: torch.Tensor) -> torch.Tensor:
        """(B, 192) -> (B, 80): L2-normalise, then the affine layer (SPEC2 §9.2)."""
        return self.spk_embed_affine_layer(F.normalize(spk_emb.to(self.encoder_proj.weight.dtype), dim=1))

    def embed_codes(self, codes: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L[, ...]) codes -> (B, L, D): ids clamped to >= 0, rows past each length zeroed (SPEC2 §9.1)."""
        b, n = codes.shape[:2]
        if lengths is None:
            lengths = torch.full((b,), n, dtype=torch.long, device=codes.device)
        valid = torch.arange(n, device=codes.device)[None, :] < lengths[:, None]
        return self.input_embedding(codes.long().clamp(min=0)) * valid[:, :, None].to(self.encoder_proj.weight.dtype)

    def encode(self, codes: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline encoder: codes (B, L) -> states (B, 2L, D) before ``encoder_proj``, and their valid mask."""
        return self.encoder(self.embed_codes(codes, lengths), lengths)

    def estimator_call(self, x: torch.Tensor, mask: torch.Tensor | None, mu: torch.Tensor, t: torch.Tensor,
                       spks: torch.Tensor, cond: torch.Tensor, step: int = 0) -> torch.Tensor:
        return self.decoder.estimator(x, mask, mu, t, spks, cond)

    def t_span(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return cosine_t_span(self.decoder.n_timesteps, device)

    def noise_slice(self, start: int, frames: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x0 = noise[:, :, start:start+frames] (the flow's buffer unless another is injected)."""
        buf = self.rand_noise if noise is None else noise
        if start + frames > buf.shape[2]:
            raise ValueError(f"noise buffer has {buf.shape[2]} frames, {start + frames} needed")
        return buf[:, :, start:start + frames].to(device=self.encoder_proj.weight.device,
                                                  dtype=self.encoder_proj.weight.dtype)

    # ------------------------------------------------------------------------------------------ offline
    @torch.inference_mode()
    def inference(self, codes: torch.Tensor, prompt_codes: torch.Tensor, prompt_mel: torch.Tensor,
                  spk_emb: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Offline token2wav flow (SPEC2 §9 steps 1-7) for one utterance.

        codes (1, L) generated codes; prompt_codes (1, P); prompt_mel (1, 2P, 80) time-major, already fitted to 2P
        frames; spk_emb (1, 192); noise (1, 80, >= 2(P+L)) or None for the flow's buffer. Returns the mel
        (1, 80, 2L) of the generated codes (the prompt's frames cut off)."""
        n_prompt_frames = prompt_codes.shape[1] * self.frames_per_code
        if prompt_mel.shape[1] != n_prompt_frames:
            raise ValueError(f"prompt mel has {prompt_mel.shape[1]} frames, the {prompt_codes.shape[1]} prompt codes "
                             f"need exactly {n_prompt_frames}")
        dtype = self.encoder_proj.weight.dtype
        spks = self.speaker_projection(spk_emb)
        all_codes = torch.cat([prompt_codes, codes], dim=1)
        h, h_mask = self.encode(all_codes)
        mu = self.encoder_proj(h).transpose(1, 2)
        cond = torch.zeros_like(mu)
        cond[:, :, :n_prompt_frames] = prompt_mel.transpose(1, 2).to(dtype)
        x0 = self.noise_slice(0, mu.shape[2], noise)
        mel = cfg_euler(self.estimator_call, x0, mu, spks, cond, self.t_span(mu.device), self.decoder.cfg_rate,
                        h_mask[:, None, :].to(dtype))
        return mel[:, :, n_prompt_frames:]
