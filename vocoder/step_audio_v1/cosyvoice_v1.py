"""The Step-Audio-TTS-3B vocoder as a product: its ``CosyVoice-300M-25Hz/`` folder loaded once, a voice, and mixed
dual-codebook values in → 22.05 kHz int16 PCM out (SPEC step_audio_v1 §8).

The folder holds ``cosyvoice.yaml`` (hyperpyyaml: ``flow:`` a ``MaskedDiffWithXvec`` with its encoder, length
regulator and CFM estimator, ``hift:`` the HiFT generator), ``flow.pt``, ``hift.pt`` (legacy ``weight_g`` /
``weight_v`` names) and ``campplus.onnx`` (read by the stack that prepares voices, not here).
:func:`read_cosyvoice_yaml` reads the yaml tolerantly: ``!new:`` tags become plain mappings, ``!ref <name>``
resolves against the file's top-level keys, an omegaconf ``DictConfig``'s ``content`` is unwrapped. Sizes the file
does not give keep the full-size values of §8.

The reference runs the v1 flow offline (``token_to_wav_offline``): the whole answer at once, then HiFT. So does
:meth:`VocoderV1.synthesize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vocoder.step_audio2.hift import HiFTConfig, HiFTGenerator
from vocoder.step_audio2.hift_stream import to_pcm16
from vocoder.step_audio_v1.flow_v1 import SAMPLE_RATE, FlowV1, FlowV1Config, prompt_mel_22k
from vocoder.step_audio_v1.flow_v1_loader import load_flow_v1
from vocoder.step_audio_v1.hift import hift_v1_config, load_hift_v1
from voxcore.strict_load import CheckpointError

N_MIXED = 5120  # mixed values: 0..1023 linguistic, 1024..5119 semantic


def _tolerant_yaml(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        value = loader.construct_scalar(node)
        return {"__ref__": value.strip().strip("<>")} if suffix == "ref" else value

    Loader.add_multi_constructor("!", untagged)
    return yaml.load(text, Loader=Loader)


def _resolve(value: Any, top: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ref__"}:
            return _resolve(top.get(value["__ref__"]), top)
        if set(value) == {"content"} and isinstance(value["content"], dict):  # !new:omegaconf.DictConfig
            return _resolve(value["content"], top)
        return {k: _resolve(v, top) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, top) for v in value]
    return value


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def read_cosyvoice_yaml(path: str | Path) -> tuple[FlowV1Config, HiFTConfig]:
    """The flow and HiFT sizes of a CosyVoice v1 ``cosyvoice.yaml``."""
    path = Path(path)
    try:
        raw = _tolerant_yaml(path.read_text())
    except Exception as exc:
        raise CheckpointError(f"{path}: not readable as YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a YAML mapping")
    raw = _resolve(raw, raw)
    flow, hift = _mapping(raw.get("flow")), _mapping(raw.get("hift"))
    decoder = _mapping(flow.get("decoder"))
    nested = {"flow": {k: flow[k] for k in ("vocab_size", "input_size", "spk_embed_dim", "input_frame_rate")
                       if k in flow},
              "encoder": _mapping(flow.get("encoder")), "estimator": _mapping(decoder.get("estimator")),
              "decoder": {"cfm_params": _mapping(decoder.get("cfm_params"))},
              "length_regulator": _mapping(flow.get("length_regulator"))}
    if int(flow.get("output_size", 80)) != 80:
        raise CheckpointError(f"{path}: flow output_size {flow['output_size']} (the v1 flow makes 80-bin mels)")
    try:
        return FlowV1Config.from_dict(nested), hift_v1_config(hift)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


@dataclass
class VoiceV1:
    """A voice prompt prepared for the v1 flow: its mixed values (1, P), 22.05 kHz mel (1, frames, 80), speaker (1, 192)."""

    prompt_mixed: torch.Tensor
    prompt_mel: torch.Tensor
    spk_emb: torch.Tensor


class VocoderV1:
    """The loaded v1 flow + 22.05 kHz HiFT (shared, read-only after loading)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, flow: FlowV1, hift: HiFTGenerator) -> None:
        self.flow, self.hift = flow.eval(), hift.eval()

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> VocoderV1:
        directory = Path(directory)
        missing = [str(directory / n) for n in ("cosyvoice.yaml", "flow.pt", "hift.pt") if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"the Step-Audio-TTS-3B vocoder folder lacks {', '.join(missing)}")
        flow_cfg, hift_cfg = read_cosyvoice_yaml(directory / "cosyvoice.yaml")
        if flow_cfg.vocab_size < N_MIXED:
            raise CheckpointError(f"{directory / 'cosyvoice.yaml'}: flow vocab_size {flow_cfg.vocab_size} < {N_MIXED} "
                                  "(the mixed linguistic + semantic values)")
        flow = load_flow_v1(str(directory / "flow.pt"), flow_cfg, dtype=dtype, device=device)
        hift = load_hift_v1(str(directory / "hift.pt"), hift_cfg, dtype=torch.float32, device=device)
        if hift.config.sampling_rate != SAMPLE_RATE:
            raise CheckpointError(f"{directory / 'cosyvoice.yaml'}: HiFT sampling_rate {hift.config.sampling_rate}, "
                                  f"the v1 vocoder runs at {SAMPLE_RATE}")
        return cls(flow, hift)

    @property
    def device(self) -> torch.device:
        return self.flow.encoder_proj.weight.device

    def voice(self, prompt_mixed: torch.Tensor | list[int], prompt_wav_22k: np.ndarray | torch.Tensor,
              spk_emb: np.ndarray | torch.Tensor) -> VoiceV1:
        """Mixed values of the prompt's interleaved ids, the 22.05 kHz prompt audio (untrimmed), its CAM++ vector."""
        mixed = torch.as_tensor(prompt_mixed, dtype=torch.long, device=self.device).reshape(1, -1)
        wav = torch.as_tensor(np.asarray(prompt_wav_22k, dtype=np.float32), device=self.device).reshape(1, -1)
        spk = torch.as_tensor(np.asarray(spk_emb, dtype=np.float32), device=self.device).reshape(1, -1)
        return VoiceV1(mixed, prompt_mel_22k(wav), spk)

    @torch.inference_mode()
    def synthesize(self, mixed: list[int], voice: VoiceV1, generator: torch.Generator | None = None) -> np.ndarray:
        """Mixed values (ids − 65536) of a whole answer → int16 PCM at 22.05 kHz (256 samples per mel frame)."""
        bad = [v for v in mixed if not 0 <= v < N_MIXED]
        if bad:
            raise ValueError(f"{len(bad)} values are not dual-codebook audio (0..{N_MIXED - 1}), e.g. {bad[0]}")
        if not mixed or self.flow.target_frames(len(mixed)) == 0:
            return np.zeros(0, np.int16)
        token = torch.as_tensor(mixed, dtype=torch.long, device=self.device)[None]
        mel = self.flow.inference(token, voice.prompt_mixed, voice.prompt_mel, voice.spk_emb, generator=generator)
        wav, _ = self.hift(mel.float())
        return to_pcm16(wav[0]).cpu().numpy()
