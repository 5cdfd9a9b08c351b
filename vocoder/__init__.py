"""Streaming vocoder: dual-codebook tokens -> mel (causal flow matching) -> 16 kHz audio (HiFi-GAN).

Public API:
- `StreamingVocoder` (+ `VocoderState`): batched core, `.tiny(seed)`, `.from_pretrained(dir)`,
  `.with_hifigan_torchscript(flow, path)`; `forward(linguistic, semantic, state=None, seeds=0)`.
- `VocoderSession` (+ `ChunkSchedule`): one session fed LLM audio ids, short first chunk then larger ones.
- `TokenToMel`, `FlowConfig`, `Generator`, `GeneratorConfig`, `WindowedGenerator`: the stages.
"""

from vocoder.flow import FlowConfig, TokenToMel
from vocoder.hifigan import Generator, GeneratorConfig, WindowedGenerator, load_hifigan_torchscript
from vocoder.model import ChunkSchedule, StreamingVocoder, VocoderSession, VocoderState

__all__ = ["ChunkSchedule", "FlowConfig", "Generator", "GeneratorConfig", "StreamingVocoder", "TokenToMel",
           "VocoderSession", "VocoderState", "WindowedGenerator", "load_hifigan_torchscript"]
