"""HiFTGenerator: 80-bin mel -> waveform (HiFi-GAN upsampler + NSF source + iSTFT head), SPEC2 §11 / SPEC v1 §8.9.

One module serves both Step-Audio vocoders; :class:`HiFTConfig` holds what differs (sample rate, upsample stages,
source resblocks, the NSF variant). The parameter names are the official ``hift.pt`` names (without the
``generator.`` prefix), weight norm in the parametrisation spelling ``*.parametrizations.weight.original0`` (g) /
``original1`` (v); :mod:`vocoder.step_audio2.loader` maps the legacy ``weight_g``/``weight_v`` onto them.

Pipeline: f0 = |Linear(5 × [WN-Conv1d k3, ELU](mel))| (Hz per frame) -> nearest ×scale -> NSF source s ->
STFT(s) (n_fft 16, hop 4) conditions every upsample stage -> conv_post -> magnitude/phase -> iSTFT -> clamp ±0.99.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from vocoder.step_audio2.nsf_source import NSF_VARIANTS, NoiseDraws, NSFSource

_DILATIONS3 = ((1, 3, 5), (1, 3, 5), (1, 3, 5))


@dataclass(frozen=True)
class HiFTConfig:
    """HiFT sizes; the defaults are the full-size Step-Audio 2 (24 kHz) generator of SPEC2 §11."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8  # overtones; the source stacks nb_harmonics + 1 sines
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = _DILATIONS3
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = _DILATIONS3
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_in_channels: int = 80
    f0_channels: int = 512
    f0_num_class: int = 1
    # "24k" (SineGen2) or "v1" (SineGen); None picks by rate as the reference does: v1 only at 22050 Hz.
    nsf_variant: str | None = field(default=None)

    def __post_init__(self) -> None:
        n_stages = len(self.upsample_rates)
        if len(self.upsample_kernel_sizes) != n_stages:
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.source_resblock_kernel_sizes) != n_stages or len(self.source_resblock_dilation_sizes) != n_stages:
            raise ValueError("one source resblock per upsample stage is needed")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.base_channels % (2 ** n_stages):
            raise ValueError(f"base_channels {self.base_channels} does not halve {n_stages} times")
        if self.nsf_variant is not None and self.nsf_variant not in NSF_VARIANTS:
            raise ValueError(f"nsf_variant {self.nsf_variant!r} is not one of {NSF_VARIANTS}")

    @property
    def upsample_scale(self) -> int:
        """Audio samples per mel frame (480 at 24 kHz, 256 at 22.05 kHz)."""
        return math.prod(self.upsample_rates) * self.hop_len

    @property
    def source_variant(self) -> str:
        if self.nsf_variant is not None:
            return self.nsf_variant
        return "v1" if self.sampling_rate == 22050 else "24k"

    # Keys of the official config dicts that only describe (class names, notes) and set nothing here.
    _INFO_KEYS = frozenset({"cls", "source_module", "full_size_reference", "key_note", "weight_norm"})

    @classmethod
    def from_dict(cls, config: dict, base: "HiFTConfig | None" = None) -> "HiFTConfig":
        """A config from a ``hift/config.json``-style dict; keys it lacks keep ``base``'s (full-size) values."""
        base = cls() if base is None else base
        known = {f.name for f in fields(cls)}
        values: dict = {}
        for key, value in config.items():
            if key in cls._INFO_KEYS:
                continue
            if key == "istft_params":
                values.update(n_fft=int(value["n_fft"]), hop_len=int(value["hop_len"]))
            elif key == "f0_predictor":
                values.update(f0_in_channels=int(value.get("in_channels", base.f0_in_channels)),
                              f0_channels=int(value.get("cond_channels", base.f0_channels)),
                              f0_num_class=int(value.get("num_class", base.f0_num_class)))
            elif key == "upsample_scale":
                continue  # derived; checked below
            elif key in known:
                values[key] = _frozen(value)
            else:
                raise ValueError(f"unknown HiFT config key {key!r}")
        result = replace(base, **values)
        if "upsample_scale" in config and int(config["upsample_scale"]) != result.upsample_scale:
            raise ValueError(f"upsample_scale {config['upsample_scale']} != prod(upsample_rates) · hop_len = "
                             f"{result.upsample_scale}")
        return result


def _frozen(value):
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


class _WeightNormParams(nn.Module):
    """g (``original0``, shape (out, 1, ...)) and v (``original1``); weight = g · v / ‖v‖ over all dims but 0."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.original0 = nn.Parameter(torch.empty((shape[0],) + (1,) * (len(shape) - 1)))
        self.original1 = nn.Parameter(torch.empty(shape))

    def forward(self) -> torch.Tensor:
        v = self.original1
        return v * (self.original0 / v.norm(dim=tuple(range(1, v.dim())), keepdim=True))


class _Parametrizations(nn.Module):
    """Holds ``weight`` so the state-dict names read ``<conv>.parametrizations.weight.original0/1``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = _WeightNormParams(shape)


class WNConv1d(nn.Module):
    """Weight-normed Conv1d."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.parametrizations = _Parametrizations((c_out, c_in, kernel))
        self.bias = nn.Parameter(torch.empty(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.parametrizations.weight(), self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(nn.Module):
    """Weight-normed ConvTranspose1d (weight (in, out, k); the norm runs over dims 1, 2 as for any dim-0 norm)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self.parametrizations = _Parametrizations((c_in, c_out, kernel))
        self.bias = nn.Parameter(torch.empty(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.parametrizations.weight(), self.bias, self.stride, self.padding)


class Snake(nn.Module):
    """x + sin²(αx) / (α + 1e-9), α per channel (linear scale, not log)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + 1.0 / (alpha + 1e-9) * torch.sin(x * alpha).pow(2)


class ResBlock(nn.Module):
    """Per dilation d: x += conv_k,1(Snake(conv_k,d(Snake(x)))), "same" padding."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(WNConv1d(channels, channels, kernel, 1, (kernel - 1) * d // 2, d)
                                    for d in dilations)
        self.convs2 = nn.ModuleList(WNConv1d(channels, channels, kernel, 1, (kernel - 1) // 2) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class F0Predictor(nn.Module):
    """ConvRNNF0Predictor: 5 × [WN-Conv1d(k3, pad 1), ELU] -> Linear -> |·|; mel (B, C, T) -> f0 (B, T) in Hz."""

    def __init__(self, in_channels: int, channels: int, num_class: int = 1, n_layers: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers += [WNConv1d(in_channels if i == 0 else channels, channels, 3, 1, 1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        hidden = self.condnet(mel).transpose(1, 2)
        return torch.abs(self.classifier(hidden).squeeze(-1))


class HiFTGenerator(nn.Module):
    """The HiFT vocoder. ``forward(mel, draws, cache_source)`` -> (wav (B, scale·T), source (B, 1, scale·T))."""

    def __init__(self, config: HiFTConfig | None = None) -> None:
        super().__init__()
        cfg = HiFTConfig() if config is None else config
        self.config = cfg
        n_bins = cfg.n_fft // 2 + 1
        self.f0_predictor = F0Predictor(cfg.f0_in_channels, cfg.f0_channels, cfg.f0_num_class)
        self.m_source = NSFSource(cfg.sampling_rate, cfg.nb_harmonics + 1, cfg.upsample_scale, cfg.source_variant,
                                  cfg.nsf_alpha, cfg.nsf_sigma, cfg.nsf_voiced_threshold)
        self.conv_pre = WNConv1d(cfg.in_channels, cfg.base_channels, 7, 1, 3)
        stage_channels = [cfg.base_channels // 2 ** (i + 1) for i in range(len(cfg.upsample_rates))]
        self.ups = nn.ModuleList(
            WNConvTranspose1d(cfg.base_channels // 2 ** i, ch, k, u, (k - u) // 2)
            for i, (u, k, ch) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, stage_channels)))
        # The STFT of the source enters stage i after downsampling by the product of the later stages' rates.
        down_rates = [math.prod(cfg.upsample_rates[i + 1:]) for i in range(len(cfg.upsample_rates))]
        self.source_downs = nn.ModuleList(
            nn.Conv1d(2 * n_bins, ch, 1, 1) if r == 1 else nn.Conv1d(2 * n_bins, ch, 2 * r, r, padding=r // 2)
            for r, ch in zip(down_rates, stage_channels))
        self.source_resblocks = nn.ModuleList(
            ResBlock(ch, k, tuple(d)) for ch, k, d in
            zip(stage_channels, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes))
        self.resblocks = nn.ModuleList(
            ResBlock(ch, k, tuple(d)) for ch in stage_channels
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = WNConv1d(stage_channels[-1], 2 * n_bins, 7, 1, 3)
        self.derive_buffers()

    def derive_buffers(self) -> None:
        """The periodic Hann window of the source STFT and the output iSTFT (not in the checkpoint).

        Computed in float64 and rounded, as the reference's float64 window cast to float32 is (bit-equal to the
        goldens' ``stft_window_hann16*``)."""
        window = torch.hann_window(self.config.n_fft, dtype=torch.float64).to(torch.float32)
        self.register_buffer("stft_window", window, persistent=False)

    # -- the three stages, public so tests and callers can inject any of them --

    def f0(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T) -> f0 (B, T) in Hz."""
        return self.f0_predictor(mel)

    def source(self, f0: torch.Tensor, draws: NoiseDraws | None = None) -> torch.Tensor:
        """f0 (B, T) per frame -> source (B, 1, scale·T): nearest upsampling, then the NSF source."""
        return self.m_source(f0.repeat_interleave(self.config.upsample_scale, dim=-1), draws)

    def _stft(self, source: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        spec = torch.stft(source.squeeze(1).float(), cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.stft_window,
                          center=True, pad_mode="reflect", return_complex=True)
        return torch.cat([spec.real, spec.imag], dim=1)

    def _istft(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        magnitude = torch.clip(magnitude.float(), max=1e2)
        phase = phase.float()
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.stft_window)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T) and source (B, 1, scale·T) -> wav (B, scale·T), clamped to ±audio_limit."""
        cfg = self.config
        dtype = self.conv_pre.bias.dtype
        source_spec = self._stft(source).to(dtype)
        x = self.conv_pre(mel.to(dtype))
        n_kernels = len(cfg.resblock_kernel_sizes)
        last = len(self.ups) - 1
        for i, (up, down, source_block) in enumerate(zip(self.ups, self.source_downs, self.source_resblocks)):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == last:
                x = F.pad(x, (1, 0), mode="reflect")  # one frame so the length is scale·T / hop + 1
            x = x + source_block(down(source_spec))
            blocks = self.resblocks[i * n_kernels:(i + 1) * n_kernels]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / n_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as in the reference
        n_bins = cfg.n_fft // 2 + 1
        wav = self._istft(torch.exp(x[:, :n_bins, :]), torch.sin(x[:, n_bins:, :]))
        return torch.clamp(wav, -cfg.audio_limit, cfg.audio_limit).to(dtype)

    def forward(self, mel: torch.Tensor, draws: NoiseDraws | None = None,
                cache_source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, 80, T) -> (wav (B, scale·T), source (B, 1, scale·T)).

        ``cache_source`` (B, 1, n) overwrites the first n source samples (streaming continuity, SPEC2 §10).
        """
        source = self.source(self.f0(mel), draws)
        if cache_source is not None and cache_source.shape[-1] > 0:
            source = source.clone()
            source[:, :, :cache_source.shape[-1]] = cache_source.to(source.dtype)
        return self.decode(mel, source), source
