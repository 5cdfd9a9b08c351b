"""A complete tiny random Step-Audio-TTS-3B download in the official layout, for tests and mechanics benchmarks.

The reference (``stepfun-ai/Step-Audio`` ``tts_inference.py --model-path DIR``) reads two folders side by side
(``runtime.step1.layout``):

    DIR/Step-Audio-TTS-3B/
        config.json, model.safetensors                   Step1 LLM (runtime.step1.checkpoint, golden sizes)
        tokenizer.json, tokenizer_config.json            its text tokenizer (see below)
        CosyVoice-300M-25Hz/cosyvoice.yaml               hyperpyyaml sizes of the flow and HiFT
        CosyVoice-300M-25Hz/flow.pt, hift.pt             v1 flow (width 32) and 22.05 kHz HiFT (base 32, legacy
                                                         weight_g / weight_v names), torch pickles
        CosyVoice-300M-25Hz/campplus.onnx                a stand-in speaker model with CAM++'s interface
    DIR/Step-Audio-Tokenizer/
        dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
            model.pt, config.yaml, am.mvn                vq02: FunASR Paraformer (encoder.* used; a decoder tensor is
                                                         stored too, as the real file has one, and dropped)
        linguistic_tokenizer.npy                         the 1024 k-means centroids
        speech_tokenizer_v1.onnx                         vq06: S3 v1 (width 64), exported with torch.onnx

What SPEC step_audio_v1 §12 leaves undetermined is filled in here by choice, not taken from the release: the text
tokenizer files (a byte-level BPE in ``tokenizer.json`` whose ids 1 / 3 / 4 are the literal ids the reference's
prompts use — their names ``<|bos|>`` / ``<|eot|>`` / ``<|bot|>`` are ours — and no post-processor, so ``encode``
adds no BOS), tied embeddings (no: an ``lm_head`` is stored, as in the goldens), ``input_frame_rate`` (41.6667) and
the flow vocabulary (5121). The product loads this through exactly the code a real download goes through
(``realtime.step_audio_tts_stack``, served by ``voxline serve --preset step-audio-tts --checkpoint DIR``). Random
weights say nothing about speech quality: what it speaks is noise. The ONNX files need ``onnx``.

    python -m runtime.step1.tiny_checkpoint DIR      # writes the download into DIR
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from runtime.step1.checkpoint import TINY_STEP1, write_tiny_step1
from runtime.step1.layout import MODEL_DIR, PARAFORMER_DIR, TOKENIZER_DIR, VOCODER_DIR
#: text-side special tokens of the tiny tokenizer: the ids are the reference's literals (SPEC §7), the names ours
TINY_SPECIALS = {"<|pad|>": 0, "<|bos|>": 1, "<|unk|>": 2, "<|eot|>": 3, "<|bot|>": 4}

COSYVOICE_YAML = """\
# tiny random Step-Audio-TTS-3B vocoder (voxline tests), hyperpyyaml as CosyVoice writes it
sample_rate: 22050
spk_embed_dim: 192
flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: 32
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 5121
    input_frame_rate: 41.6667
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        output_size: 32
        attention_heads: 2
        linear_units: 64
        num_blocks: 2
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 32
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1, 1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 0.000001
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [32, 32]
            dropout: 0.0
            attention_head_dim: 32
            n_blocks: 1
            num_mid_blocks: 2
            num_heads: 2
            act_fn: 'gelu'
hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 32
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 32
"""
FLOW_SIZES = {"vocab_size": 5121, "input_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2,
              "channels": (32, 32), "attention_head_dim": 32, "n_blocks": 1, "num_mid_blocks": 2, "num_heads": 2}
PARAFORMER_YAML = """\
# tiny random Paraformer streaming encoder (voxline tests), FunASR config.yaml keys
model: ParaformerStreaming
encoder: SANMEncoderChunkOpt
encoder_conf:
    output_size: 32
    attention_heads: 2
    linear_units: 64
    num_blocks: 3
    kernel_size: 11
    sanm_shfit: 0
    input_layer: pe_online
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    selfattention_layer_type: sanm
frontend: WavFrontendOnline
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
    dither: 0.0
input_size: 560
"""
S3_V1_SIZES = {"n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 2,
               "n_codebook_size": 4096}


def _randomise(module: nn.Module, seed: int, std: float = 0.05) -> dict[str, torch.Tensor]:
    """Every parameter drawn from N(0, std) (norm gains and weight-norm g around 1), reproducibly; the state dict."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            draw = torch.randn(p.shape, generator=gen) * std
            p.copy_(1.0 + draw if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "original0"))
                    else draw)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


# ---- the LLM folder --------------------------------------------------------------------------------------------
def write_text_tokenizer(directory: Path) -> None:
    """A byte-level BPE (no merges): the specials at 0..4, the 256 byte symbols at 5..260. Any text encodes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = dict(TINY_SPECIALS)
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(c, special=True, normalized=False) for c in TINY_SPECIALS])
    tok.save(str(directory / "tokenizer.json"))
    decoder = {str(i): {"content": c, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                        "single_word": False} for c, i in TINY_SPECIALS.items()}
    cfg = {"added_tokens_decoder": decoder, "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>",
           "eos_token": "<|eot|>", "pad_token": "<|pad|>", "add_bos_token": False, "model_max_length": 32768}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def write_flow(directory: Path, seed: int) -> None:
    from vocoder.step_audio_v1.flow_v1 import FlowV1, FlowV1Config

    torch.save(_randomise(FlowV1(FlowV1Config(**FLOW_SIZES)), seed), directory / "flow.pt")


def write_hift(directory: Path, seed: int) -> None:
    """HiFT with the legacy weight-norm names the v1 release uses (``weight_g`` / ``weight_v``, SPEC §8.9)."""
    from vocoder.step_audio2.hift import HiFTGenerator
    from vocoder.step_audio_v1.hift import hift_v1_config

    hift = HiFTGenerator(hift_v1_config({"base_channels": 32, "f0_channels": 32}))
    legacy = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}
    state = {}
    for key, value in _randomise(hift, seed, std=0.1).items():
        for ours, theirs in legacy.items():
            key = key.removesuffix(ours) + theirs if key.endswith(ours) else key
        state[key] = value
    torch.save(state, directory / "hift.pt")


# ---- the tokenizer folder --------------------------------------------------------------------------------------
def write_paraformer(directory: Path, seed: int) -> None:
    import yaml

    from tokenizer.step_audio_v1.linguistic import LinguisticConfig, LinguisticTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(PARAFORMER_YAML)
    model = LinguisticTokenizer(LinguisticConfig.from_funasr(yaml.safe_load(PARAFORMER_YAML)))
    state = {f"encoder.{k}": v for k, v in _randomise(model.encoder, seed).items()}
    state["decoder.embed.0.weight"] = torch.zeros(8, 4)  # the real model.pt holds the ASR decoder; it is dropped
    torch.save(state, directory / "model.pt")
    rng = np.random.default_rng(seed)
    shift, rescale = -rng.uniform(8.0, 12.0, 560), rng.uniform(0.2, 0.4, 560)

    def vec(values: np.ndarray) -> str:
        return " ".join(f"{v:.6f}" for v in values)

    (directory / "am.mvn").write_text(
        f"<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n<LearnRateCoef> 0 [ {vec(shift)} ]\n"
        f"<Rescale> 560 560\n<LearnRateCoef> 0 [ {vec(rescale)} ]\n</Nnet>\n")


def write_s3_v1_onnx(path: Path, seed: int) -> None:
    from tokenizer.s3.blocks import S3Config
    from tokenizer.s3.v1 import S3TokenizerV1

    model = S3TokenizerV1(S3Config(**S3_V1_SIZES))
    _randomise(model, seed, std=0.2)
    model.eval()

    class Exported(nn.Module):  # the release's interface: feats [B, 128, T] float, feats_length [B] int32
        def __init__(self, inner: S3TokenizerV1) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
            return self.inner(feats, feats_length.long())[0]

    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes say nothing here
        warnings.simplefilter("ignore")
        torch.onnx.export(Exported(model), (torch.randn(1, 128, 200), torch.tensor([200], dtype=torch.int32)),
                          str(path), dynamo=False, input_names=["feats", "feats_length"], output_names=["indices"],
                          dynamic_axes={"feats": {0: "B", 2: "T"}, "feats_length": {0: "B"},
                                        "indices": {0: "B", 1: "t"}})


def write_tiny_step_audio_tts(directory: str | Path, seed: int = 0) -> Path:
    """The whole tiny download (see the module docstring) under ``directory``; returns ``directory``."""
    from runtime.step_audio2.tiny_checkpoint import write_speaker_onnx

    directory = Path(directory)
    model_dir, vocoder_dir = directory / MODEL_DIR, directory / MODEL_DIR / VOCODER_DIR
    tok_dir = directory / TOKENIZER_DIR
    vocoder_dir.mkdir(parents=True, exist_ok=True)
    tok_dir.mkdir(parents=True, exist_ok=True)
    write_tiny_step1(model_dir, seed, TINY_STEP1)
    write_text_tokenizer(model_dir)
    (vocoder_dir / "cosyvoice.yaml").write_text(COSYVOICE_YAML)
    write_flow(vocoder_dir, seed + 1)
    write_hift(vocoder_dir, seed + 2)
    write_speaker_onnx(vocoder_dir, seed + 3)
    write_paraformer(tok_dir / PARAFORMER_DIR, seed + 4)
    centroids = np.random.default_rng(seed + 5).standard_normal((1024, 32)).astype(np.float32) * 0.5
    np.save(tok_dir / "linguistic_tokenizer.npy", centroids)
    write_s3_v1_onnx(tok_dir / "speech_tokenizer_v1.onnx", seed + 6)
    (directory / "VOXLINE_TINY.json").write_text(json.dumps({"note": "random weights: mechanics only", "seed": seed}))
    return directory


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m runtime.step1.tiny_checkpoint DIR")
    print(write_tiny_step_audio_tts(sys.argv[1]))
