"""The CFM estimator of the Step-Audio-TTS-3B flow: a 1-D U-Net (`ConditionalDecoder`), official key names.

Golden SPEC (step_audio_v1) §8 step 8. Input channels are [x, mu, spk repeated over time, cond] (4 × 80 = 320). A
sinusoidal embedding of 1000·t (sin half first) goes through `time_mlp`; every ResNet block adds Linear(Mish(τ)).
Down stages halve time with a stride-2 conv (the last stage keeps it), mid blocks keep it, up stages concatenate the
stored skip and double time with a transposed conv. Transformer blocks are diffusers' `BasicTransformerBlock`
("gelu", no cross-attention: norm1/attn1/norm3/ff) with an inner attention width heads·head_dim that need not equal
the channel count, and no attention mask (Step-Audio's copy passes none).

The module layout mirrors the checkpoint's (`down_blocks.i.{0: resnet, 1: transformers, 2: down/up-sampler}`), so
`flow.pt` loads without renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

LN_EPS = 1e-5
N_MELS = 80


def timestep_features(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) t -> (B, dim) [sin(s·f_i), cos(s·f_i)], s = 1000·t, f_i = exp(−i·ln(10000)/(dim/2 − 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = scale * t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimestepMLP(nn.Module):
    """`time_mlp`: Linear(in→4·C₀), SiLU, Linear(4·C₀→4·C₀)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Block1D(nn.Module):
    """[Conv1d(k3, p1), GroupNorm(8), Mish] on (x·mask), output ·mask."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(in_ch, out_ch, 3, padding=1), nn.GroupNorm(groups, out_ch), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class ResnetBlock1D(nn.Module):
    """h = Block(x); h += Linear(Mish(τ)); h = Block(h); out = h + Conv1x1(x·mask)."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, out_ch))
        self.block1 = Block1D(in_ch, out_ch)
        self.block2 = Block1D(out_ch, out_ch)
        self.res_conv = nn.Conv1d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(tau)[:, :, None]
        return self.block2(h, mask) + self.res_conv(x * mask)


class Downsample1D(nn.Module):
    """`.conv`: Conv1d(k3, stride 2, p1) — time T -> ceil(T/2)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    """`.conv`: ConvTranspose1d(k4, stride 2, p1) — time T -> 2T."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(ch, ch, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SelfAttention(nn.Module):
    """`attn1`: to_q/to_k/to_v without bias into heads·head_dim, SDPA (1/sqrt(head_dim)), `to_out.0` with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # index 1 is a parameterless dropout upstream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        return self.to_out[0](out.transpose(1, 2).reshape(batch, length, -1))


class GELUProj(nn.Module):
    """`ff.net.0`: Linear(C→4C) then exact GELU (diffusers "gelu")."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """`ff.net`: [GELUProj, dropout (no weights), Linear(4C→C)]."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """x += attn1(norm1(x)); x += ff(norm3(x)) on (B, T, C)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim, eps=LN_EPS)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


def _transformers(dim: int, count: int, heads: int, head_dim: int) -> nn.ModuleList:
    return nn.ModuleList(TransformerBlock(dim, heads, head_dim) for _ in range(count))


def _run_transformers(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    x = x.transpose(1, 2)  # (B, C, T) -> (B, T, C)
    for block in blocks:
        x = block(x)
    return x.transpose(1, 2)


class ConditionalDecoderV1(nn.Module):
    """`decoder.estimator.*`: (x, mask, mu, t, spks, cond) -> velocity (B, 80, T)."""

    def __init__(self, in_channels: int = 4 * N_MELS, out_channels: int = N_MELS,
                 channels: Sequence[int] = (256, 256), attention_head_dim: int = 64, n_blocks: int = 4,
                 num_mid_blocks: int = 12, num_heads: int = 8) -> None:
        super().__init__()
        channels = tuple(channels)
        self.time_features = in_channels
        time_dim = 4 * channels[0]
        self.time_mlp = TimestepMLP(in_channels, time_dim)

        def stage(in_ch: int, out_ch: int, sampler: nn.Module) -> nn.ModuleList:
            return nn.ModuleList([ResnetBlock1D(in_ch, out_ch, time_dim),
                                  _transformers(out_ch, n_blocks, num_heads, attention_head_dim), sampler])

        self.down_blocks = nn.ModuleList()
        out_ch = in_channels
        for i, ch in enumerate(channels):
            in_ch, out_ch = out_ch, ch
            last = i == len(channels) - 1
            self.down_blocks.append(stage(in_ch, out_ch, nn.Conv1d(out_ch, out_ch, 3, padding=1) if last
                                          else Downsample1D(out_ch)))
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResnetBlock1D(channels[-1], channels[-1], time_dim),
                           _transformers(channels[-1], n_blocks, num_heads, attention_head_dim)])
            for _ in range(num_mid_blocks))
        up_channels = channels[::-1] + (channels[0],)
        self.up_blocks = nn.ModuleList()
        for i in range(len(up_channels) - 1):
            in_ch, out_ch = 2 * up_channels[i], up_channels[i + 1]
            last = i == len(up_channels) - 2
            self.up_blocks.append(stage(in_ch, out_ch, nn.Conv1d(out_ch, out_ch, 3, padding=1) if last
                                        else Upsample1D(out_ch)))
        self.final_block = Block1D(up_channels[-1], up_channels[-1])
        self.final_proj = nn.Conv1d(up_channels[-1], out_channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x, mu, cond (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80)."""
        tau = self.time_mlp(timestep_features(t, self.time_features).to(x.dtype))
        x = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[-1]), cond], dim=1)
        masks, skips = [mask], []
        for resnet, transformers, downsample in self.down_blocks:
            mask_down = masks[-1]
            x = _run_transformers(transformers, resnet(x, mask_down, tau))
            skips.append(x)
            x = downsample(x * mask_down)
            masks.append(mask_down[:, :, ::2])
        # The last down stage does not stride, so the mask after it is the one before it.
        masks.pop()
        mask_mid = masks[-1]
        for resnet, transformers in self.mid_blocks:
            x = _run_transformers(transformers, resnet(x, mask_mid, tau))
        for resnet, transformers, upsample in self.up_blocks:
            mask_up, skip = masks.pop(), skips.pop()
            x = torch.cat([x[:, :, :skip.shape[-1]], skip], dim=1)
            x = _run_transformers(transformers, resnet(x, mask_up, tau))
            x = upsample(x * mask_up)
        x = self.final_block(x, mask_up)
        return self.final_proj(x * mask_up) * mask
