"""The 22.05 kHz HiFT of Step-Audio-TTS-3B (Step-Audio v1 SPEC §8.9): the Step-Audio 2 generator, re-parametrised.

The module and its loader are shared with Step-Audio 2 (:mod:`vocoder.step_audio2.hift`,
:func:`vocoder.step_audio2.loader.load_hift`); what differs is only configuration: 22050 Hz, two ×8 upsample stages
(256 samples per frame), two source resblocks (kernels 7, 11), and the v1 sine generator (full-rate phase cumsum,
θ ~ U(−π, π)). Official v1 checkpoints use the legacy ``weight_g``/``weight_v`` names, which the shared loader maps.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vocoder.step_audio2.hift import HiFTConfig, HiFTGenerator
from vocoder.step_audio2.loader import hift_config, load_hift
from voxcore.strict_load import Source

# Full-size defaults (real base 512, f0 predictor 512, SPEC v1 §8.9).
STEP_AUDIO_V1_HIFT = HiFTConfig(
    sampling_rate=22050,
    upsample_rates=(8, 8),
    upsample_kernel_sizes=(16, 16),
    source_resblock_kernel_sizes=(7, 11),
    source_resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
    nsf_variant="v1",
)


def hift_v1_config(config: HiFTConfig | Mapping | None = None) -> HiFTConfig:
    """A v1 HiFT config: keys ``config`` lacks keep the full-size v1 values (not Step-Audio 2's)."""
    return hift_config(config, base=STEP_AUDIO_V1_HIFT)


def load_hift_v1(path_or_tensors: Source, config: HiFTConfig | Mapping | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> HiFTGenerator:
    """:func:`load_hift` with the v1 defaults (a ``hift_v1/config.json``-style dict may override them)."""
    return load_hift(path_or_tensors, hift_v1_config(config), dtype=dtype, device=device)
