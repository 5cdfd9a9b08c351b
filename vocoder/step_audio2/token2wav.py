"""Step-Audio 2 token2wav as a product: the checkpoint's ``token2wav/`` folder loaded once, a voice, and per-session
streams of speech codes in → 24 kHz int16 PCM out (SPEC2 §9, §10, §11).

The folder holds ``flow.pt`` (or ``flow.safetensors``), ``hift.pt`` (or ``hift.safetensors``), ``flow.yaml`` and the
speaker / S3 models (ONNX; read by the stack that prepares voices, not here — the vocoder does not tokenize).
Sizes: SPEC2 §14 says the real ``flow.yaml``'s spelling is not determined, so :func:`read_flow_yaml` reads the
hyperpyyaml file tolerantly (``!new:``/``!ref`` tags become plain values) and takes the sizes it can find under
``flow`` → ``encoder`` / ``decoder`` → ``estimator``; anything it cannot find keeps the full-size values of §9.
HiFT has no config file in the release: its widths are read off ``hift.pt``'s own tensor shapes.

:class:`Token2Wav` is shared and read-only; a :class:`Voice` is prepared once per voice prompt (its flow setup
caches); :meth:`Token2Wav.stream` gives a session its own :class:`Token2WavStream` (flow chunk caches forked from
the voice, HiFT caches), which is all the state a speaking session carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxcore.strict_load import CheckpointError, Source
from vocoder.step_audio2.flow import StepAudio2Flow
from vocoder.step_audio2.flow_loader import load_flow
from vocoder.step_audio2.flow_stream import CodeChunker, FlowStreamState, setup_stream, stream_chunk
from vocoder.step_audio2.hift import HiFTConfig, HiFTGenerator
from vocoder.step_audio2.hift_stream import HiFTStream, to_pcm16
from vocoder.step_audio2.loader import hift_key, load_hift
from vocoder.step_audio2.prompt_mel import fit_prompt_mel, prompt_mel_24k

SAMPLE_RATE = 24000
FLOW_FILES = ("flow.pt", "flow.safetensors")
HIFT_FILES = ("hift.pt", "hift.safetensors")


# ---- reading the folder ---------------------------------------------------------------------------------
def _tolerant_yaml(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("!", untagged)
    return yaml.load(text, Loader=Loader)


def read_flow_yaml(path: str | Path) -> dict[str, dict[str, Any]]:
    """The sizes in a ``flow.yaml`` as the sections :func:`vocoder.step_audio2.flow_loader.build_flow` reads."""
    raw = _tolerant_yaml(Path(path).read_text())
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a YAML mapping")
    flow = raw.get("flow", raw)
    flow = flow if isinstance(flow, dict) else {}
    decoder = flow.get("decoder") if isinstance(flow.get("decoder"), dict) else {}
    estimator = decoder.get("estimator") if isinstance(decoder.get("estimator"), dict) else {}
    cfm = dict(decoder.get("cfm_params") or {}) if isinstance(decoder.get("cfm_params"), dict) else {}
    if "inference_cfg_rate" in decoder:
        cfm["inference_cfg_rate"] = decoder["inference_cfg_rate"]
    top = {k: flow[k] for k in ("input_size", "output_size", "spk_embed_dim", "vocab_size") if k in flow}
    encoder = flow.get("encoder") if isinstance(flow.get("encoder"), dict) else {}
    return {"flow": top, "encoder": dict(encoder), "estimator_dit": dict(estimator), "cfm": cfm}


def hift_config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> HiFTConfig:
    """HiFT widths from the checkpoint's tensors (the release ships no HiFT config)."""
    def width(prefix: str) -> int:
        for key, shape in shapes.items():
            k = hift_key(key)
            if k.startswith(prefix) and k.endswith(("parametrizations.weight.original1", ".weight")):
                return int(shape[0])
        raise CheckpointError(f"hift checkpoint has no {prefix}* tensor to read its width from")

    return HiFTConfig(base_channels=width("conv_pre."), f0_channels=width("f0_predictor.condnet.0."))


def _tensor_shapes(source: Path) -> dict[str, tuple[int, ...]]:
    if source.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(source), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    sd = torch.load(str(source), map_location="meta", weights_only=True)
    return {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _one_of(directory: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: none of {', '.join(names)} found (a Step-Audio 2 token2wav folder)")


# ---- the shared model and a voice ----------------------------------------------------------------------
@dataclass
class Voice:
    """A voice prompt prepared for the flow: its S3 codes (1, P), mel (1, 2P, 80), speaker vector (1, 192), and the
    flow's stream caches after the prompt (SPEC2 §10 setup), which every session forks."""

    prompt_codes: torch.Tensor
    prompt_mel: torch.Tensor
    spk_emb: torch.Tensor
    setup: FlowStreamState


class Token2Wav:
    """The loaded flow + HiFT (shared by every session; never written after loading)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, flow: StepAudio2Flow, hift: HiFTGenerator) -> None:
        self.flow, self.hift = flow.eval(), hift.eval()

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> Token2Wav:
        """A checkpoint's ``token2wav/`` folder (see the module docstring)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no token2wav folder")
        flow_file, hift_file = _one_of(directory, FLOW_FILES), _one_of(directory, HIFT_FILES)
        yaml_file = directory / "flow.yaml"
        flow_cfg = read_flow_yaml(yaml_file) if yaml_file.is_file() else None
        flow = load_flow(str(flow_file), flow_cfg, dtype=dtype, device=device)
        hift = load_hift(str(hift_file), hift_config_from_shapes(_tensor_shapes(hift_file)), dtype=dtype,
                         device=device)
        return cls(flow, hift)

    @property
    def device(self) -> torch.device:
        return self.flow.encoder_proj.weight.device

    def voice(self, prompt_codes: torch.Tensor | list[int], prompt_wav_24k: torch.Tensor | np.ndarray,
              spk_emb: torch.Tensor | np.ndarray) -> Voice:
        """Prepare a voice from its prompt: S3 codes of the 16 kHz prompt, the 24 kHz prompt audio, CAM++ vector."""
        codes = torch.as_tensor(prompt_codes, dtype=torch.long, device=self.device).reshape(1, -1)
        wav = torch.as_tensor(np.asarray(prompt_wav_24k, dtype=np.float32), device=self.device).reshape(-1)
        spk = torch.as_tensor(np.asarray(spk_emb, dtype=np.float32), device=self.device).reshape(1, -1)
        mel = fit_prompt_mel(prompt_mel_24k(wav), codes.shape[1])
        return Voice(codes, mel, spk, setup_stream(self.flow, codes, mel, spk))

    def stream(self, voice: Voice) -> Token2WavStream:
        return Token2WavStream(self, voice)

    @torch.inference_mode()
    def offline(self, codes: list[int], voice: Voice) -> np.ndarray:
        """All codes at once (the reference's offline path) → int16 PCM."""
        if not codes:
            return np.zeros(0, np.int16)
        c = torch.as_tensor(codes, dtype=torch.long, device=self.device)[None]
        mel = self.flow.inference(c, voice.prompt_codes, voice.prompt_mel, voice.spk_emb)
        wav, _ = self.hift(mel)
        return to_pcm16(wav[0]).cpu().numpy()


class Token2WavStream:
    """One session's streaming synthesis: push codes as the LLM emits them, get PCM as each chunk completes."""

    def __init__(self, model: Token2Wav, voice: Voice) -> None:
        self.model, self.voice = model, voice
        self.reset()

    def reset(self) -> None:
        """A new utterance in the same voice."""
        self.chunker = CodeChunker()
        self.flow_state = self.voice.setup.fork()
        self.hift_stream = HiFTStream(self.model.hift)
        self.codes = 0

    @torch.inference_mode()
    def _synth(self, codes: list[int], last: bool) -> np.ndarray:
        c = torch.as_tensor(codes, dtype=torch.long, device=self.model.device)[None]
        mel = stream_chunk(self.model.flow, self.flow_state, c, last_chunk=last)
        return self.hift_stream.push(mel, last=last).pcm16[0].cpu().numpy()

    def push(self, codes: list[int]) -> list[np.ndarray]:
        """Add S3 codes (0..6560); returns the PCM of every chunk that became complete (may be empty)."""
        self.codes += len(codes)
        return [self._synth(chunk, last=False) for chunk in self.chunker.push(codes)]

    def finish(self) -> np.ndarray:
        """The rest of the utterance (held-back tail included); the stream is then ready for a new one."""
        rest = self.chunker.finish()
        if rest is None:
            # nothing pending in the flow: flush only HiFT's held-back tail, if a chunk was ever vocoded
            tail = self.hift_stream.speech_cache
            out = np.zeros(0, np.int16) if tail is None else to_pcm16(tail[0]).cpu().numpy()
        else:
            out = self._synth(rest, last=True)
        self.reset()
        return out


def load_token2wav(source: Source | str | Path, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> Token2Wav:
    """:meth:`Token2Wav.load` (the one loader of a ``token2wav/`` folder)."""
    return Token2Wav.load(Path(str(source)), dtype=dtype, device=device)
