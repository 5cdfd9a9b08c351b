"""Issue 21 acceptance 3: a tiny random Step-Audio-TTS-3B download written in the official layout (Step1 safetensors +
config + tokenizer, CosyVoice-300M-25Hz/ with cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx, and
Step-Audio-Tokenizer/ with the Paraformer, k-means and S3 v1 ONNX files) goes text -> dual-codebook ids -> audio over
`/v1/audio/speech`, served by `--preset step-audio-tts --checkpoint DIR` through the shared SlotLoop / DecodeEngine.
Random weights: the audio is noise; these tests check mechanics (layout, ids, lengths, errors), not quality."""

from __future__ import annotations

import importlib.util
import io
import shutil

import numpy as np
import openai
import pytest
import soundfile
import torch

from audio_server.settings import Settings
from runtime.sampling import GREEDY
from runtime.step1.answer import DualCodebookAnswerConstraint
from tokenizer.step_audio_v1.interleave import split_ids
from vocoder.step_audio_v1.flow_v1 import HOP, target_frames
from voxcore.strict_load import CheckpointError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnx") is None,
                                reason="writing the tiny download's ONNX files needs the `onnx` test dependency")
LING0, SEM0, SEM_END, END = 65536, 65536 + 1024, 65536 + 1024 + 4096, 3


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    from runtime.step1.tiny_checkpoint import write_tiny_step_audio_tts

    return write_tiny_step_audio_tts(tmp_path_factory.mktemp("step-audio-tts-tiny"), seed=0)


@pytest.fixture(scope="module")
def server(download):
    from audio_server.app import create_app
    from audio_server.live import LiveServer
    from audio_server.models import ModelHub

    settings = Settings(preset="step-audio-tts", checkpoint=str(download), step_audio_slots=2)
    hub = ModelHub(settings)
    stack = hub.step_audio_tts()
    stack.default_voice()
    live = LiveServer(create_app(settings, hub)).start()
    live.stack = stack
    yield live
    live.stop()
    stack.close()
    hub.close()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused-on-loopback", max_retries=0)


def _assert_interleaved(ids: list[int]) -> None:
    """Position i of an answer holds a linguistic id when i % 5 in (0, 1), else a semantic one (SPEC v1 §5)."""
    for i, t in enumerate(ids):
        assert (LING0 <= t < SEM0) if i % 5 < 2 else (SEM0 <= t < SEM_END), (i, t)


# ---- the download ----------------------------------------------------------------------------------------------
def test_the_download_is_the_official_layout(download):
    from runtime.step1.layout import resolve_layout

    layout = resolve_layout(download)
    assert layout.model_dir.name == "Step-Audio-TTS-3B" and layout.vocoder_dir.name == "CosyVoice-300M-25Hz"
    assert {p.name for p in layout.model_dir.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                           "tokenizer_config.json", "CosyVoice-300M-25Hz"}
    assert {p.name for p in layout.vocoder_dir.iterdir()} >= {"cosyvoice.yaml", "flow.pt", "hift.pt", "campplus.onnx"}
    assert {p.name for p in (download / "Step-Audio-Tokenizer").iterdir()} >= {
        "linguistic_tokenizer.npy", "speech_tokenizer_v1.onnx", "dengcunqin"}
    assert {p.name for p in layout.paraformer_dir.iterdir()} >= {"model.pt", "config.yaml", "am.mvn"}
    # the reference loads hift.pt strictly with the legacy weight-norm names
    assert any(k.endswith(".weight_g") for k in torch.load(layout.hift, map_location="meta", weights_only=True))


def test_tts_prompt_is_the_reference_layout(download):
    from runtime.step1.layout import resolve_layout
    from runtime.step1.prompt import SYS_PROMPT_WO_SPK, Step1TextTokenizer, tts_prompt

    tok = Step1TextTokenizer(resolve_layout(download).text_tokenizer)
    enc = tok.encode
    assert enc("\n") and enc("\nHi")[:len(enc("\n"))] == enc("\n")
    code = [65536 + 5, 65536 + 9, 66560 + 1, 66560 + 2, 66560 + 3]
    want = ([1, 4] + enc("system\n" + SYS_PROMPT_WO_SPK) + [3]
            + [4] + enc("human\n") + enc("\nvoice words")[len(enc("\n")):] + [3]
            + [4] + enc("assistant\n") + code + [3]
            + [4] + enc("human\n") + enc("\nSay this.")[len(enc("\n")):] + [3]
            + [4] + enc("assistant\n"))
    assert tts_prompt("Say this.", tok, "voice words", code) == want
    assert all(t < 65536 for t in enc("system\n" + SYS_PROMPT_WO_SPK))  # the tiny tokenizer's ids are text ids


def test_cosyvoice_yaml_sizes(download):
    from runtime.step1.layout import resolve_layout
    from runtime.step1.tiny_checkpoint import FLOW_SIZES
    from vocoder.step_audio_v1.cosyvoice_v1 import read_cosyvoice_yaml

    flow, hift = read_cosyvoice_yaml(resolve_layout(download).cosyvoice_yaml)
    assert {k: getattr(flow, k) for k in FLOW_SIZES} == FLOW_SIZES
    assert flow.inference_cfg_rate == 0.7 and flow.input_frame_rate == 41.6667   # omegaconf DictConfig content
    assert hift.sampling_rate == 22050 and hift.upsample_rates == (8, 8)          # !ref <sample_rate> resolved
    assert (hift.n_fft, hift.hop_len, hift.f0_channels, hift.nsf_variant) == (16, 4, 32, "v1")


# ---- the constraint --------------------------------------------------------------------------------------------
def test_constraint_phase_mask_and_end_on_group_boundaries():
    vocab = 74752
    c = DualCodebookAnswerConstraint(vocab, END, batch=2)
    c.admit(0, 7, True)
    c.admit(1, 7, False)
    pos = torch.arange(7, 7 + 15).expand(2, -1)
    out = c.mask(torch.zeros(2, 15, vocab), pos)
    ok = out[0] > float("-inf")                                                  # [15, V]
    for i in range(15):
        allowed = set(torch.nonzero(ok[i]).flatten().tolist())
        audio = set(range(LING0, SEM0)) if i % 5 < 2 else set(range(SEM0, SEM_END))
        assert allowed == audio | ({END} if i % 5 == 0 and i > 0 else set()), i
    assert torch.isfinite(out[1]).all()                                          # a free slot is not masked


def _reference_repetition(history: list[int], scores: torch.Tensor) -> torch.Tensor:
    """RepetitionAwareLogitsProcessor as SPEC v1 §6 states it, on one sequence (the test's own re-statement)."""
    scores = scores.clone()
    window = history[-10:]
    if len(window) == 10 and window.count(window[-1]) / 10 > 0.1:
        scores[window[-1]] = float("-inf")
    return scores


def test_constraint_repetition_rule_matches_the_reference_statement():
    vocab = 74752
    gen = torch.Generator().manual_seed(3)
    cap = 64
    for trial in range(20):
        tokens = torch.randint(LING0, LING0 + 6, (1, cap), generator=gen)      # few distinct ids: many repeats
        c = DualCodebookAnswerConstraint(vocab, END, batch=1)
        c.attach(tokens)
        c.admit(0, 0, True)
        c.allowed[:] = True                                                      # isolate the repetition rule
        target = int(torch.randint(1, 40, (1,), generator=gen))
        logits = torch.randn(1, 1, vocab, generator=gen)
        got = c.mask(logits, torch.tensor([[target]]))[0, 0]
        want = _reference_repetition(tokens[0, :target].tolist(), logits[0, 0])
        assert torch.equal(torch.isinf(got[LING0:]), torch.isinf(want[LING0:])), (trial, target)


# ---- speech over HTTP ------------------------------------------------------------------------------------------
def test_speech_route_returns_22k_audio_of_the_generated_dual_codebook_ids(server):
    stack = server.stack
    steps0 = stack.loop.steps
    wav = _client(server).audio.speech.create(model="tts-1", voice="alloy", input="Hello there.",
                                              response_format="wav").read()
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    result = stack.last
    assert rate == 22050 and stack.loop.steps > steps0                           # decoded by the shared loop
    assert result.finish in ("stop", "length") and len(result.ids) >= 5
    _assert_interleaved(result.ids)
    ling, sem = split_ids(result.ids[:len(result.ids) - len(result.ids) % 5])   # whole 2:3 groups
    assert 3 * len(ling) == 2 * len(sem)
    whole = len(result.ids) - len(result.ids) % 5
    assert len(audio) == HOP * target_frames(whole, 41.6667)                     # 256 samples per mel frame
    assert 0.1 < len(audio) / rate < 60 and np.abs(audio).max() > 0


def test_speech_route_pcm_is_resampled_to_24k(server):
    import httpx

    # no voice named: the route's default voice name is accepted for the preset's one voice
    reply = httpx.post(server.base_url + "/v1/audio/speech", timeout=120,
                       json={"model": "tts-1", "input": "Hi.", "response_format": "pcm"})
    assert reply.status_code == 200, reply.text
    pcm = reply.content
    whole = len(server.stack.last.ids) - len(server.stack.last.ids) % 5
    samples_22k = HOP * target_frames(whole, 41.6667)
    assert len(pcm) % 2 == 0 and abs(len(pcm) // 2 - samples_22k * 24000 / 22050) < 64


def test_models_lists_the_tts_model(server):
    cards = {m.id: m for m in _client(server).models.list()}
    assert "random weights" in cards["step-audio-tts-3b"].description  # the tiny download says its audio is noise


def test_speech_route_accepts_the_listed_model_name(server):
    import httpx

    reply = httpx.post(server.base_url + "/v1/audio/speech", timeout=120,
                       json={"model": "step-audio-tts-3b", "input": "Hi.", "response_format": "wav"})
    assert reply.status_code == 200, reply.text
    assert reply.content[:4] == b"RIFF"


def test_pipeline_greedy_with_a_budget_cut_mid_group(server):
    stack = server.stack
    result = stack.synthesize("Testing one two.", params=GREEDY, max_new=23)
    assert result.finish == "length" and len(result.ids) == 23
    _assert_interleaved(result.ids)
    assert len(result.pcm) == HOP * target_frames(20, stack.vocoder.flow.config.input_frame_rate)
    again = stack.synthesize("Testing one two.", params=GREEDY, max_new=23)
    assert again.ids == result.ids                                               # greedy alone in the loop


def test_concurrent_answers_share_one_batched_loop(server):
    """Two answers with different prompt lengths held until both are admitted: every step then runs both slots
    (one batched step per id), each under its own phase (the constraint's per-slot start)."""
    import queue
    import threading

    from runtime.slot_loop import Generation

    stack = server.stack
    go = threading.Event()
    done: list[queue.SimpleQueue] = [queue.SimpleQueue(), queue.SimpleQueue()]
    got: list[list[int]] = [[], []]
    gens = []
    for i, text in enumerate(("Short.", "A somewhat longer sentence to speak.")):
        gens.append(stack.loop.submit(Generation(
            stack.prompt_ids(text), got[i].extend, done[i].put, params=GREEDY, max_new=17, stop_ids=frozenset({END}),
            may_run=go.is_set, constrained=True)))
    while not (got[0] and got[1]):                                               # both prefilled (first id out)
        stack.loop.wake()
        threading.Event().wait(0.01)
    slot_steps0, steps0 = stack.loop.slot_steps, stack.loop.steps
    go.set()
    stack.loop.wake()
    assert [d.get(timeout=120) for d in done] == ["length", "length"]
    assert stack.loop.max_live >= 2
    assert stack.loop.slot_steps - slot_steps0 == 2 * (stack.loop.steps - steps0)  # every step carried both
    for ids in got:
        assert len(ids) == 17
        _assert_interleaved(ids)


def test_voice_prompt_ids_are_interleaved(server):
    voice = server.stack.default_voice()
    assert len(voice.prompt_ids) % 5 == 0 and voice.prompt_ids
    _assert_interleaved(voice.prompt_ids)
    prompt = server.stack.prompt_ids("Hello.")
    assert prompt[:2] == [1, 4] and prompt[-1] != END                            # ends at enc("assistant\n")


# ---- broken downloads ------------------------------------------------------------------------------------------
def test_a_missing_file_is_named(download, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(download, broken)
    (broken / "Step-Audio-TTS-3B" / "CosyVoice-300M-25Hz" / "flow.pt").unlink()
    with pytest.raises(ValueError, match=r"missing: .*CosyVoice-300M-25Hz/flow\.pt$"):
        Settings(preset="step-audio-tts", checkpoint=str(broken))
    from realtime.step_audio_tts_stack import StepAudioTTSStack

    with pytest.raises(CheckpointError, match=r"flow\.pt"):
        StepAudioTTSStack.load(broken)


def test_a_misshaped_tensor_is_named(download, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from realtime.step_audio_tts_stack import StepAudioTTSStack

    broken = tmp_path / "broken"
    shutil.copytree(download, broken)
    weights = broken / "Step-Audio-TTS-3B" / "model.safetensors"
    tensors = load_file(str(weights))
    key = "model.layers.1.self_attn.k_proj.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0] + 4, tensors[key].shape[1])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        StepAudioTTSStack.load(broken)
    assert key in str(err.value) and "shape" in str(err.value).lower()
    from audio_server.cli import main

    assert main(["serve", "--preset", "step-audio-tts", "--checkpoint", str(broken), "--port", "8799"]) == 2
    assert key in capsys.readouterr().err                                        # one line, no traceback


def test_a_missing_vocoder_tensor_is_named(download, tmp_path):
    from realtime.step_audio_tts_stack import StepAudioTTSStack

    broken = tmp_path / "broken"
    shutil.copytree(download, broken)
    flow_pt = broken / "Step-Audio-TTS-3B" / "CosyVoice-300M-25Hz" / "flow.pt"
    state = torch.load(flow_pt, weights_only=True)
    key = "encoder_proj.weight"
    del state[key]
    torch.save(state, flow_pt)
    with pytest.raises(CheckpointError, match=rf"flow\.pt.*missing.*{key}"):
        StepAudioTTSStack.load(broken)
