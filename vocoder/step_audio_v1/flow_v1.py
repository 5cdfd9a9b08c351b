"""The Step-Audio-TTS-3B flow (CosyVoice v1 25 Hz `MaskedDiffWithXvec`): tokens -> 22.05 kHz / hop-256 mel.

Golden SPEC (step_audio_v1) §8 steps 1–7, official key names (`flow.pt` loads as is):

1. spk = `spk_embed_affine_layer`(L2-normalise(192-d speaker vector)) -> 80;
2. tokens = [prompt, target] (ids − 65536, mixed 0..5119), `input_embedding` after clamping at ≥ 0;
3. `encoder` (conformer, `flow_v1_encoder`), `encoder_proj` -> 80, split into prompt and target rows;
4. `length_regulator`: each part linearly interpolated on its own (prompt -> mel_len1 = prompt mel frames, target ->
   mel_len2 = int(n / input_frame_rate · 22050 / 256)), then convs -> mu;
5. `decoder` (`ConditionalCFM`): 10 cosine-scheduled Euler steps from z ~ N(0, 1) with CFG 0.7 on the estimator
   (`flow_v1_decoder`), cond = prompt mel then zeros; the first mel_len1 frames are cut off.

The CFM start noise is injectable (``noise=`` or ``generator=``) so the goldens reproduce (§10 `cfm_noise_z`). The
prompt mel of §8 (matcha `mel_spectrogram`) is :func:`prompt_mel_22k`. Load a checkpoint with
``vocoder.step_audio_v1.flow_v1_loader.load_flow_v1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vocoder.step_audio_v1.flow_v1_decoder import N_MELS, ConditionalDecoderV1
from vocoder.step_audio_v1.flow_v1_encoder import ConformerEncoderV1
from voxcore.whisper_mel import slaney_filterbank

SAMPLE_RATE = 22_050
HOP = 256
N_FFT = 1024


@dataclass(frozen=True)
class FlowV1Config:
    """Sizes of the v1 flow. Defaults are the full-size reference of SPEC §8 ([3rd-party] CosyVoice-300M values).

    ``input_frame_rate`` is [unknown] for the release (SPEC §12); ≈ 41.67 gives the right durations.
    """

    vocab_size: int = 5121
    input_size: int = 512             # embedding and conformer width D
    spk_embed_dim: int = 192
    input_frame_rate: float = 41.6667
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    channels: tuple[int, ...] = (256, 256)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    n_timesteps: int = 10
    inference_cfg_rate: float = 0.7
    regulator_convs: int = 4          # Conv(k3)+GroupNorm+Mish groups before the final 1x1 conv

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> FlowV1Config:
        """Flat field names, or the nested layout of the golden `flow_v1/config.json` (flow/encoder/estimator/...)."""
        if not any(k in cfg for k in ("flow", "encoder", "estimator", "decoder", "length_regulator")):
            names = {f.name for f in fields(cls)}
            unknown = sorted(set(cfg) - names)
            if unknown:
                raise ValueError(f"unknown FlowV1Config fields: {', '.join(unknown)}")
            values = dict(cfg)
            if "channels" in values:
                values["channels"] = tuple(values["channels"])
            return cls(**values)
        flow, enc = cfg.get("flow", {}), cfg.get("encoder", {})
        est, dec = cfg.get("estimator", {}), cfg.get("decoder", {})
        reg = cfg.get("length_regulator", {})
        d = cls()
        return cls(
            vocab_size=flow.get("vocab_size", d.vocab_size), input_size=flow.get("input_size", d.input_size),
            spk_embed_dim=flow.get("spk_embed_dim", d.spk_embed_dim),
            input_frame_rate=flow.get("input_frame_rate", d.input_frame_rate),
            attention_heads=enc.get("attention_heads", d.attention_heads),
            linear_units=enc.get("linear_units", d.linear_units), num_blocks=enc.get("num_blocks", d.num_blocks),
            channels=tuple(est.get("channels", d.channels)),
            attention_head_dim=est.get("attention_head_dim", d.attention_head_dim),
            n_blocks=est.get("n_blocks", d.n_blocks), num_mid_blocks=est.get("num_mid_blocks", d.num_mid_blocks),
            num_heads=est.get("num_heads", d.num_heads), n_timesteps=dec.get("n_timesteps", d.n_timesteps),
            inference_cfg_rate=dec.get("cfm_params", {}).get("inference_cfg_rate", d.inference_cfg_rate),
            regulator_convs=len(reg.get("sampling_ratios", [1] * d.regulator_convs)))

    @classmethod
    def coerce(cls, config: FlowV1Config | Mapping[str, Any] | None) -> FlowV1Config:
        if config is None:
            return cls()
        return config if isinstance(config, cls) else cls.from_dict(config)


def prompt_mel_22k(wave: torch.Tensor) -> torch.Tensor:
    """[B, samples] 22.05 kHz prompt -> [B, frames, 80] natural-log Slaney mel (SPEC §8 inputs, matcha recipe).

    Reflect pad 384 each side, STFT n_fft 1024 / hop 256 / periodic Hann 1024 uncentred, magnitude
    sqrt(re² + im² + 1e-9), 80 Slaney mels over 0–8000 Hz, ln(max(·, 1e-5)). frames = samples // 256 + 1 for
    samples ≥ 256.
    """
    pad = (N_FFT - HOP) // 2
    x = F.pad(wave[:, None, :], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(N_FFT, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=False, return_complex=True)
    magnitude = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    filters = slaney_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 8000.0).to(device=wave.device, dtype=wave.dtype)
    return torch.log(torch.clamp(filters @ magnitude, min=1e-5)).transpose(1, 2)


def target_frames(n_tokens: int, input_frame_rate: float) -> int:
    """mel_len2 = int(n / input_frame_rate · 22050 / 256) (SPEC §8 step 5)."""
    return int(n_tokens / input_frame_rate * SAMPLE_RATE / HOP)


def cosine_time_grid(n_steps: int, device: torch.device | None = None) -> torch.Tensor:
    """t_k = 1 − cos(π/2 · k/n), k = 0..n (SPEC §8 step 7)."""
    t = torch.linspace(0, 1, n_steps + 1, device=device, dtype=torch.float32)
    return 1 - torch.cos(t * 0.5 * math.pi)


class InterpolateRegulator(nn.Module):
    """`length_regulator.model`: n × [Conv1d(k3), GroupNorm(1), Mish], Conv1d(k1), after a per-part interpolation."""

    def __init__(self, channels: int = N_MELS, n_convs: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_convs):
            layers += [nn.Conv1d(channels, channels, 3, padding=1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, prompt_rows: torch.Tensor, target_rows: torch.Tensor, mel_len1: int,
                mel_len2: int) -> torch.Tensor:
        """prompt (B, P, 80), target (B, N, 80) rows -> mu (B, mel_len1 + mel_len2, 80), time-major."""
        parts = [F.interpolate(target_rows.transpose(1, 2), size=mel_len2, mode="linear", align_corners=False)]
        if prompt_rows.shape[1]:
            parts.insert(0, F.interpolate(prompt_rows.transpose(1, 2), size=mel_len1, mode="linear",
                                          align_corners=False))
        return self.model(torch.cat(parts, dim=2)).transpose(1, 2)


class ConditionalCFMV1(nn.Module):
    """`decoder`: Euler over the cosine grid with classifier-free guidance; holds the `estimator`."""

    def __init__(self, estimator: ConditionalDecoderV1, n_timesteps: int, cfg_rate: float) -> None:
        super().__init__()
        self.estimator = estimator
        self.n_timesteps, self.cfg_rate = n_timesteps, cfg_rate

    def forward(self, mu: torch.Tensor, mask: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """mu, cond (B, 80, T), mask (B, 1, T), spks (B, 80) -> x at t = 1 (B, 80, T).

        The start is ``noise`` when given (same shape as mu), else a fresh N(0, 1) draw from ``generator``.
        """
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=torch.float32)
        elif noise.shape != mu.shape:
            raise ValueError(f"CFM noise has shape {tuple(noise.shape)}, expected mu's {tuple(mu.shape)}")
        x = noise.to(device=mu.device, dtype=mu.dtype)
        grid = cosine_time_grid(self.n_timesteps, mu.device)
        # CFG: one estimator call on a batch of 2B, the second half with mu, spk and cond zeroed.
        mu_in, spk_in = torch.cat([mu, torch.zeros_like(mu)]), torch.cat([spks, torch.zeros_like(spks)])
        cond_in, mask_in = torch.cat([cond, torch.zeros_like(cond)]), torch.cat([mask, mask])
        t, dt = grid[0], grid[1] - grid[0]
        batch = mu.shape[0]
        for step in range(1, len(grid)):
            t_in = t.expand(2 * batch).to(mu.dtype)
            v = self.estimator(torch.cat([x, x]), mask_in, mu_in, t_in, spk_in, cond_in)
            v_cond, v_uncond = v[:batch], v[batch:]
            x = x + dt * ((1 + self.cfg_rate) * v_cond - self.cfg_rate * v_uncond)
            t = t + dt
            if step < len(grid) - 1:
                dt = grid[step + 1] - t
        return x


class FlowV1(nn.Module):
    """`MaskedDiffWithXvec` with the checkpoint's names: input_embedding, spk_embed_affine_layer, encoder,
    encoder_proj, length_regulator, decoder.estimator."""

    def __init__(self, config: FlowV1Config | None = None) -> None:
        super().__init__()
        self.config = c = config or FlowV1Config()
        self.input_embedding = nn.Embedding(c.vocab_size, c.input_size)
        self.spk_embed_affine_layer = nn.Linear(c.spk_embed_dim, N_MELS)
        self.encoder = ConformerEncoderV1(c.input_size, c.input_size, c.attention_heads, c.linear_units,
                                          c.num_blocks)
        self.encoder_proj = nn.Linear(c.input_size, N_MELS)
        self.length_regulator = InterpolateRegulator(N_MELS, c.regulator_convs)
        estimator = ConditionalDecoderV1(4 * N_MELS, N_MELS, c.channels, c.attention_head_dim, c.n_blocks,
                                         c.num_mid_blocks, c.num_heads)
        self.decoder = ConditionalCFMV1(estimator, c.n_timesteps, c.inference_cfg_rate)

    def _dtype(self) -> torch.dtype:
        return self.encoder_proj.weight.dtype

    def speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, 192) speaker vector -> (B, 80): Linear(L2-normalise(e)) (SPEC §8 step 1)."""
        return self.spk_embed_affine_layer(F.normalize(embedding.to(self._dtype()), dim=1))

    def encode(self, token: torch.Tensor, prompt_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) target and (B, P) prompt ids (mixed 0..5119) -> encoder_proj rows (B, P, 80), (B, N, 80)."""
        tokens = torch.cat([prompt_token, token], dim=1).to(self.input_embedding.weight.device)
        hidden = self.encoder(self.input_embedding(torch.clamp(tokens, min=0)))
        rows = self.encoder_proj(hidden)
        return rows[:, :prompt_token.shape[1]], rows[:, prompt_token.shape[1]:]

    def target_frames(self, n_tokens: int) -> int:
        return target_frames(n_tokens, self.config.input_frame_rate)

    @torch.no_grad()
    def inference(self, token: torch.Tensor, prompt_token: torch.Tensor, prompt_feat: torch.Tensor,
                  embedding: torch.Tensor, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Target tokens (B, N), prompt tokens (B, P), prompt mel (B, mel_len1, 80), speaker (B, 192) ->
        mel (B, 80, mel_len2). ``noise`` (B, 80, mel_len1 + mel_len2) is the CFM start when given."""
        if token.shape[0] != prompt_token.shape[0] or token.shape[0] != prompt_feat.shape[0]:
            raise ValueError("token, prompt_token and prompt_feat must have the same batch size")
        spk = self.speaker(embedding)
        prompt_rows, target_rows = self.encode(token, prompt_token)
        mel_len1, mel_len2 = prompt_feat.shape[1], self.target_frames(token.shape[1])
        mu = self.length_regulator(prompt_rows, target_rows, mel_len1, mel_len2).transpose(1, 2)
        cond = torch.zeros_like(mu)
        cond[:, :, :mel_len1] = prompt_feat.to(device=mu.device, dtype=mu.dtype).transpose(1, 2)
        mask = torch.ones(mu.shape[0], 1, mu.shape[2], device=mu.device, dtype=mu.dtype)
        mel = self.decoder(mu, mask, spk, cond, noise=noise, generator=generator)
        return mel[:, :, mel_len1:]


__all__: Sequence[str] = ("ConditionalCFMV1", "FlowV1", "FlowV1Config", "InterpolateRegulator", "cosine_time_grid",
                          "prompt_mel_22k", "target_frames")
