"""``train-mtp``: self-distillation data is the backbone's own greedy decoding, the backbone stays
frozen, the loss goes down, and the CLI writes an MTP weights file the engine can load."""
from __future__ import annotations

import torch
from rt_helpers import tiny

from runtime.checkpoint import load_mtp
from runtime.engine import DecodeEngine
from runtime.generate import generate
from runtime.presets import build_tiny
from runtime.train_mtp import TrainMTPConfig, build_pool, main, mtp_loss, pass_through_init, train_mtp


def test_pool_is_greedy_continuation_with_matching_hidden_states():
    model = tiny(dtype=torch.float32)
    cfg = TrainMTPConfig(n_sequences=5, seq_len=24, prompt_len=(3, 8), seed=4)
    tokens, hidden, target = build_pool(model, cfg, log=lambda s: None)
    assert tokens.shape == (5, 24) and hidden.shape == (5, 24, model.config.d_model)
    with torch.no_grad():
        full = model(tokens)
        argmax = model.logits(full).argmax(-1)
    torch.testing.assert_close(hidden, full, atol=1e-4, rtol=0)   # float32, 1-token vs full forward
    # Past the longest prompt, every target is the backbone's own greedy choice.
    assert torch.equal(target[:, 8:], argmax[:, 8:])


def test_training_lowers_loss_and_freezes_backbone():
    model = tiny(dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainMTPConfig(steps=40, max_seconds=60, n_sequences=16, seq_len=32, prompt_len=(2, 6),
                         batch_size=8, bf16=False, log_every=1000)
    pool = build_pool(model, cfg, log=lambda s: None)
    with torch.no_grad():
        loss0, _ = mtp_loss(model, *pool, start=6)
    summary = train_mtp(model, cfg, log=lambda s: None)
    with torch.no_grad():
        loss1, _ = mtp_loss(model, *pool, start=6)
    assert summary["steps"] == 40 and loss1 < 0.85 * loss0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("mtp."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mtp."))
    assert not any(p.requires_grad for p in model.parameters())


def test_cli_writes_loadable_mtp_weights(tmp_path, capsys):
    out = tmp_path / "mtp.safetensors"
    rc = main(["--model", "tiny", "--out", str(out), "--steps", "3", "--sequences", "4",
               "--seq-len", "32", "--batch-size", "2", "--fp32"])
    assert rc == 0 and out.is_file()
    assert "step 1 loss" in capsys.readouterr().out
    model = load_mtp(build_tiny(), out)
    r = generate(DecodeEngine(model, batch=1, capacity=64, n_draft=3), [[1, 2, 3]], max_new_tokens=8)
    plain = generate(DecodeEngine(model, batch=1, capacity=64), [[1, 2, 3]], max_new_tokens=8)
    assert r.tokens == plain.tokens


def test_pass_through_warm_start_drafts_the_same_token_again():
    """With tied embeddings, the warm start makes every depth propose the pending token again."""
    model = tiny(dtype=torch.float32, tie_embeddings=True, d_model=64)
    pass_through_init(model)
    eng = DecodeEngine(model, batch=1, capacity=64, n_draft=3)
    eng.reset(0)
    first = eng.extend(0, [5, 9, 11, 2])
    n = eng.slots[0].length
    assert eng.state.tokens[0, n + 1:n + 4].tolist() == [first] * 3
