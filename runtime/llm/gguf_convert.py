"""GGUF → HF-style checkpoint directory (Qwen2 / Llama parameter names), read by :mod:`runtime.checkpoint`.

The ``gguf`` package reads the file and dequantises every tensor (Q4_K, Q5_0, Q6_K, Q8_0, Q4_1 ...) to
float32; we store bfloat16 (the dequantised values carry ~4-6 bits of information, bf16 keeps them with
an error far below the quantisation error) and the config under Qwen2/Llama field names, so vLLM,
transformers and :func:`runtime.checkpoint.load_checkpoint` read the same directory.

Q/K permutation: ``convert_hf_to_gguf.py`` reorders the rows of ``q_proj``/``k_proj`` for the *llama*
architecture (ggml's RoPE rotates interleaved pairs, HF's rotates halves) and leaves *qwen2* alone; we
undo it for llama so the weights match the "rotate half" RoPE of :mod:`runtime.layers`. Checked by
generation: with the permutation left in, SmolLM2 answers with garbage.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_tensor_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (and the top-level names)."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if not m or m.group(2) not in _LAYER_NAMES:
        raise ValueError(f"unsupported GGUF tensor {gguf_name!r}")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute`` of q/k rows (weight [out, in] or bias [out]) for ``n_head`` heads."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def read_metadata(reader) -> dict[str, Any]:
    """Every scalar/string/array field of a ``gguf.GGUFReader`` as plain Python values."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def hf_config(meta: dict[str, Any], has_output: bool) -> dict[str, Any]:
    """A Qwen2 or Llama ``config.json`` from GGUF metadata (plus ``qkv_bias`` for our loader)."""
    arch = meta["general.architecture"]
    if arch not in ("qwen2", "llama"):
        raise ValueError(f"unsupported GGUF architecture {arch!r} (qwen2 and llama are supported)")
    g = lambda k, d=None: meta.get(f"{arch}.{k}", d)  # noqa: E731
    n_heads = int(g("attention.head_count"))
    d_model = int(g("embedding_length"))
    vocab = int(g("vocab_size", len(meta["tokenizer.ggml.tokens"])))
    cfg: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": arch,
        "hidden_act": "silu",
        "hidden_size": d_model,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(g("attention.head_count_kv", n_heads)),
        "head_dim": d_model // n_heads,
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length")),
        "vocab_size": vocab,
        "tie_word_embeddings": not has_output,
        "bos_token_id": int(meta.get("tokenizer.ggml.bos_token_id", 0)),
        "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"]),
        "torch_dtype": "bfloat16",
        # Ours (runtime.config): Qwen2 has q/k/v biases, Llama has none.
        "qkv_bias": arch == "qwen2",
    }
    if arch == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=cfg["max_position_embeddings"],
                   max_window_layers=cfg["num_hidden_layers"])
    else:
        cfg.update(attention_bias=False, mlp_bias=False)
    return cfg


def convert_gguf(src: str | Path, dst: str | Path, chat_format: str, source_name: str = "") -> Path:
    """Write ``dst/{config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
    generation_config.json}`` from the GGUF file ``src``. Returns ``dst``."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from runtime.llm.tokenizer import build_tokenizer, special_token_ids

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(str(src))
    meta = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = hf_config(meta, has_output="output.weight" in names)
    arch = meta["general.architecture"]
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape.tolist())])    # GGUF lists ne0 (the row) first
        if arch == "llama" and ".attn_q." in t.name:
            w = unpermute_qk(w, cfg["num_attention_heads"])
        elif arch == "llama" and ".attn_k." in t.name:
            w = unpermute_qk(w, cfg["num_key_value_heads"])
        tensors[hf_tensor_name(t.name)] = torch.from_numpy(np.array(w, copy=True)).to(torch.bfloat16)
    save_file(tensors, str(dst / "model.safetensors"),
              metadata={"format": "pt", "source": f"{source_name} (GGUF, dequantised)"})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    tok = build_tokenizer(meta)
    tok.save(str(dst / "tokenizer.json"))
    tokens = meta["tokenizer.ggml.tokens"]
    specials = special_token_ids(meta)
    eos = [cfg["eos_token_id"]] + [i for i in specials.get("stop", []) if i != cfg["eos_token_id"]]
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg["max_position_embeddings"],
        "bos_token": tokens[cfg["bos_token_id"]],
        "eos_token": tokens[cfg["eos_token_id"]],
        "pad_token": tokens[int(meta.get("tokenizer.ggml.padding_token_id", cfg["eos_token_id"]))],
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "chat_template": meta.get("tokenizer.chat_template", ""),
        "voxline_chat_format": chat_format,
    }, indent=2) + "\n")
    (dst / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg["bos_token_id"], "eos_token_id": eos, "do_sample": False,
    }, indent=2) + "\n")
    return dst
