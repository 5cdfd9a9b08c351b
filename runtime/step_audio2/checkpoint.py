"""Step-Audio 2 checkpoint directories in the official layout: read, write, and tiny random ones for tests.

Layout (golden SPEC.md §7, §14; HF sharded-safetensors convention)::

    config.json                          nested: text_config (Qwen2) + audio_encoder_config
    model-00001-of-0000N.safetensors     tensors model.*, lm_head.weight, encoder.*, adapter.*
    model.safetensors.index.json         {"metadata": {"total_size": ...}, "weight_map": {name: shard}}
    tokenizer.json, tokenizer_config.json

:func:`load_step_audio2` reads it through voxcore.strict_load: the model is built on the meta device, every tensor
goes shard by shard straight into the target dtype and device (no fp32 copy of the model ever exists), and one
CheckpointError names every missing, unexpected and mis-shaped tensor. :func:`load_step_audio2_weights` is the
inner step the golden tests call with their weights files. Random checkpoints are generated shard by shard so the
writer never holds more than one shard (bench/step_audio2_load.py writes ~1B parameters this way).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from runtime.step_audio2.config import (AUDIO_OFFSET, N_AUDIO_CODES, TEXT_VOCAB_SIZE, AudioEncoderConfig,
                                        StepAudio2Config, lm_config_from_qwen2)
from runtime.step_audio2.model import StepAudio2ForCausalLM
from runtime.step_audio2.tokens import TOKEN_CONTENTS, TOKENIZER_CONFIG, TOKENIZER_JSON
from voxcore.strict_load import CheckpointError, Source, empty_parameters, load_strict

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024 ** 3          # HF's default max_shard_size ("5GB")

# The ids write_text_tokenizer gives the tokens the SPEC leaves open (§2, §14). <|BOT|>/<|EOT|> take the golden's
# stand-ins inside the text range; <audio_end> the golden's assumption; <tts_pad> the last free special id.
TINY_SPECIAL_IDS = {"<|BOT|>": 151680, "<|EOT|>": 151681, "<audio_start>": 151688, "<audio_end>": 151689,
                    "<audio_patch>": 151690, "<tts_start>": 151693, "<tts_end>": 151694, "<tts_pad>": 151695}


# ---- reading ------------------------------------------------------------------------------------------------
def read_config(directory: str | Path) -> StepAudio2Config:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}; expected a Step-Audio 2 checkpoint directory")
    return StepAudio2Config.from_dict(json.loads(path.read_text()), where=str(path))


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The shards named by ``model.safetensors.index.json`` (checked against their headers), else every
    ``*.safetensors`` in the directory."""
    directory = Path(directory)
    index = directory / INDEX_NAME
    if not index.is_file():
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{directory}: no {INDEX_NAME} and no *.safetensors files")
        return files
    weight_map: dict[str, str] = json.loads(index.read_text()).get("weight_map", {})
    shards = sorted(set(weight_map.values()))
    absent = [s for s in shards if not (directory / s).is_file()]
    if absent:
        raise CheckpointError(f"{index}: names shard files that do not exist: {', '.join(absent)}")
    problems = []
    for shard in shards:
        with safe_open(str(directory / shard), framework="pt") as fh:
            held = set(fh.keys())
        listed = {k for k, v in weight_map.items() if v == shard}
        if listed - held:
            problems.append(f"{shard} lacks {', '.join(sorted(listed - held)[:8])}")
        if held - listed:
            problems.append(f"{shard} holds tensors the index does not list: {', '.join(sorted(held - listed)[:8])}")
    if problems:
        raise CheckpointError(f"{index}: index and shards disagree: " + "; ".join(problems))
    return [directory / s for s in shards]


def load_step_audio2_weights(config: StepAudio2Config, source: Source, dtype: torch.dtype | None = torch.bfloat16,
                             device: str | torch.device = "cpu", where: str | None = None) -> StepAudio2ForCausalLM:
    """Build ``config``'s model on the meta device and load ``source`` (file(s) or a name -> tensor dict) strictly."""
    if config.lm.tie_embeddings:
        raise CheckpointError(f"{where or 'config'}: tie_word_embeddings=true; Step-Audio 2 has an untied lm_head")
    with empty_parameters():
        model = StepAudio2ForCausalLM(config)
    load_strict(model, source, dtype=dtype, device=device, where=where)
    return model


def load_step_audio2(directory: str | Path, dtype: torch.dtype | None = torch.bfloat16,
                     device: str | torch.device = "cpu") -> StepAudio2ForCausalLM:
    """The official Step-Audio 2 mini directory -> model in ``dtype`` on ``device`` (eval mode)."""
    return load_step_audio2_weights(read_config(directory), checkpoint_files(directory), dtype=dtype,
                                    device=device, where=str(directory))


# ---- writing ------------------------------------------------------------------------------------------------
def _plan_shards(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Names in order, cut into shards of at most ``max_shard_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_shards(directory: str | Path, config: StepAudio2Config, shapes: dict[str, tuple[int, ...]],
                 tensor: Callable[[str, tuple[int, ...]], torch.Tensor], dtype: torch.dtype,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Write config.json, the shards and the index; ``tensor(name, shape)`` is called shard by shard, so only one
    shard's tensors are alive at a time."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    item = torch.empty((), dtype=dtype).element_size()
    sizes = {name: item * _numel(shape) for name, shape in shapes.items()}
    plan = _plan_shards(sizes, max_shard_bytes)
    weight_map: dict[str, str] = {}
    files = []
    for i, names in enumerate(plan, start=1):
        shard = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
        tensors = {name: tensor(name, shapes[name]).to(dtype).contiguous() for name in names}
        save_file(tensors, str(directory / shard), metadata={"format": "pt"})
        del tensors
        weight_map.update({name: shard for name in names})
        files.append(directory / shard)
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    raw = config.to_dict()
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    (directory / CONFIG_NAME).write_text(json.dumps(raw, indent=2) + "\n")
    return files


def save_step_audio2(model: StepAudio2ForCausalLM, directory: str | Path,
                     max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write ``model`` in the official layout (shards + index + nested config.json), in its own dtype."""
    sd = model.state_dict()
    dtype = next(model.parameters()).dtype
    write_shards(directory, model.step_config, {k: tuple(v.shape) for k, v in sd.items()},
                 lambda name, _shape: sd[name].detach().cpu(), dtype, max_shard_bytes)
    return Path(directory)


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def model_shapes(config: StepAudio2Config) -> dict[str, tuple[int, ...]]:
    """Every stored tensor's name and shape, in state-dict order (a meta build: no memory)."""
    with empty_parameters():
        model = StepAudio2ForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def random_tensor(seed: int, std: float = 0.02) -> Callable[[str, tuple[int, ...]], torch.Tensor]:
    """``tensor(name, shape)`` for :func:`write_shards`: norm gains around 1, everything else N(0, std), each
    tensor from its own generator (seed and name), drawn in bfloat16 so no fp32 copy of a big table exists."""
    def draw(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + sum(ord(c) * (i + 1) for i, c in enumerate(name)))
        out = torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, std, generator=gen)
        if _is_norm_gain(name):
            out = out.mul_(5.0).add_(1.0)
        return out
    return draw


def _is_norm_gain(name: str) -> bool:
    return name.endswith(("norm.weight", "_ln.weight", "layernorm.weight"))


def tiny_config(vocab_size: int = 158720) -> StepAudio2Config:
    """The golden's sizes (SPEC §12): LLM hidden 32, 2 layers, 4/2 heads of 8, MLP 64; encoder 64 wide, 4 heads,
    2 layers, 128 mels, 1500 positions; adapter to 32."""
    lm = lm_config_from_qwen2({"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "head_dim": 8, "max_position_embeddings": 16384})
    audio = AudioEncoderConfig(n_mels=128, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                               llm_dim=32)
    return StepAudio2Config(lm=lm, audio=audio)


def write_tiny_step_audio2(directory: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                           max_shard_bytes: int = 4 * 1024 ** 2) -> Path:
    """A tiny random Step-Audio 2 checkpoint in the official layout (several shards, index, config, tokenizer)."""
    config = tiny_config()
    write_shards(directory, config, model_shapes(config), random_tensor(seed), dtype, max_shard_bytes)
    write_text_tokenizer(directory)
    return Path(directory)


# ---- tokenizer ----------------------------------------------------------------------------------------------
def write_text_tokenizer(directory: str | Path, special_ids: dict[str, int] | None = None,
                         omit: Sequence[str] = ()) -> Path:
    """A small but real byte-level tokenizer whose special tokens sit at Step-Audio 2's ids.

    Ids 0..255 are the byte alphabet (GPT-2's byte-to-unicode map, so any text encodes), unused text ids are
    reserved fillers up to 151688, then the specials, <audio_0> .. <audio_6561> at 151696 .. 158257.
    ``special_ids`` overrides :data:`TINY_SPECIAL_IDS` (except the two certain ids); ``omit`` leaves tokens out
    (to test that a missing one is named)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    ids = dict(TINY_SPECIAL_IDS, **(special_ids or {}))
    ids.update({f"<audio_{c}>": AUDIO_OFFSET + c for c in range(N_AUDIO_CODES + 1)})
    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=_byte_of))}
    specials = {content: i for content, i in ids.items() if content not in omit}
    taken = set(specials.values())
    for i in range(len(vocab), AUDIO_OFFSET + N_AUDIO_CODES + 1):
        if i not in taken:
            vocab[f"<|reserved_{i}|>"] = i
    vocab.update(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(c, special=True, normalized=False)
                            for c, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / TOKENIZER_JSON))
    decoder = {str(i): {"content": c, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                        "single_word": False} for c, i in sorted(specials.items(), key=lambda kv: kv[1])}
    cfg = {"added_tokens_decoder": decoder, "tokenizer_class": "PreTrainedTokenizerFast",
           "eos_token": TOKEN_CONTENTS["eot"] if TOKEN_CONTENTS["eot"] in specials else None,
           "model_max_length": 16384, "text_vocab_size": TEXT_VOCAB_SIZE}
    (directory / TOKENIZER_CONFIG).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return directory


def _byte_of(ch: str) -> int:
    """The byte a ByteLevel alphabet character stands for (GPT-2's map), so ids 0..255 follow byte order."""
    return _BYTE_OF[ch]


def _bytes_to_unicode() -> dict[str, int]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF = _bytes_to_unicode()
