"""Where a Step-Audio-TTS-3B download keeps its files, and one check that names every file that is missing.

The reference (``stepfun-ai/Step-Audio`` ``tts_inference.py --model-path DIR``) reads two folders side by side::

    DIR/Step-Audio-TTS-3B/            config.json, *.safetensors, tokenizer.json (+ tokenizer_config.json)
    DIR/Step-Audio-TTS-3B/CosyVoice-300M-25Hz/
                                      cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx
    DIR/Step-Audio-Tokenizer/         linguistic_tokenizer.npy, speech_tokenizer_v1.onnx,
                                      dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
                                          model.pt, config.yaml, am.mvn

:func:`resolve_layout` takes ``DIR`` (or the ``Step-Audio-TTS-3B`` folder itself, with ``Step-Audio-Tokenizer`` beside
it) and returns every path, or raises one :class:`~voxcore.strict_load.CheckpointError` listing each missing file.
It reads nothing but the directory tree, so settings validation can call it without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voxcore.strict_load import CheckpointError

MODEL_DIR = "Step-Audio-TTS-3B"
TOKENIZER_DIR = "Step-Audio-Tokenizer"
VOCODER_DIR = "CosyVoice-300M-25Hz"
PARAFORMER_DIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
TEXT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class StepAudioTTSLayout:
    root: Path
    model_dir: Path          # the Step1 LLM: config.json + safetensors + the text tokenizer
    text_tokenizer: Path     # tokenizer.json (or a sentencepiece tokenizer.model)
    vocoder_dir: Path        # CosyVoice-300M-25Hz
    cosyvoice_yaml: Path
    flow: Path
    hift: Path
    campplus: Path
    paraformer_dir: Path
    paraformer_weights: Path
    paraformer_config: Path
    cmvn: Path
    kmeans: Path
    s3_v1: Path


def _folders(directory: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) for DIR or DIR/Step-Audio-TTS-3B."""
    if (directory / MODEL_DIR).is_dir() or not (directory / "config.json").is_file():
        return directory / MODEL_DIR, directory / TOKENIZER_DIR
    return directory, directory.parent / TOKENIZER_DIR


def resolve_layout(directory: str | Path) -> StepAudioTTSLayout:
    """The download's paths (see the module docstring); CheckpointError naming every missing file or folder."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory (a Step-Audio-TTS-3B download: {MODEL_DIR}/ and "
                              f"{TOKENIZER_DIR}/ side by side)")
    model_dir, tok_dir = _folders(root)
    voc, para = model_dir / VOCODER_DIR, tok_dir / PARAFORMER_DIR
    text = next((model_dir / n for n in TEXT_TOKENIZER_FILES if (model_dir / n).is_file()),
                model_dir / TEXT_TOKENIZER_FILES[0])
    layout = StepAudioTTSLayout(
        root=root, model_dir=model_dir, text_tokenizer=text, vocoder_dir=voc,
        cosyvoice_yaml=voc / "cosyvoice.yaml", flow=voc / "flow.pt", hift=voc / "hift.pt",
        campplus=voc / "campplus.onnx", paraformer_dir=para, paraformer_weights=para / "model.pt",
        paraformer_config=para / "config.yaml", cmvn=para / "am.mvn", kmeans=tok_dir / "linguistic_tokenizer.npy",
        s3_v1=tok_dir / "speech_tokenizer_v1.onnx")
    missing = [str(p) for p in (model_dir / "config.json", layout.text_tokenizer, layout.cosyvoice_yaml, layout.flow,
                                layout.hift, layout.campplus, layout.paraformer_weights, layout.paraformer_config,
                                layout.cmvn, layout.kmeans, layout.s3_v1) if not p.is_file()]
    if model_dir.is_dir() and not any(model_dir.glob("*.safetensors")):
        missing.insert(1, str(model_dir / "model.safetensors"))
    if missing:
        raise CheckpointError(f"{root} is not a complete Step-Audio-TTS-3B download; missing: {', '.join(missing)}")
    return layout
