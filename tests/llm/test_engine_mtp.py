"""The chat engine with MTP drafts is token-identical to plain greedy decoding (float32), across turns
that reuse a slot's cached prefix and across length buckets — the parts our engine adds around the
runtime's DecodeEngine."""

from __future__ import annotations

import asyncio

import torch

from runtime.chat_api import ChatMessage, ChatRequest
from tests.llm.conftest import SMALL


def _engines():
    from runtime.checkpoint import load_checkpoint
    from runtime.llm.chat_format import chat_format
    from runtime.llm.embedded import checkpoint_dir
    from runtime.llm.mtp import with_mtp
    from runtime.llm.tokenizer import TextTokenizer
    from runtime.llm.torch_engine import EngineOptions, TorchChatEngine

    path = checkpoint_dir(SMALL)
    tok = TextTokenizer(path)
    fmt = chat_format("smollm2", tok)
    base = load_checkpoint(path, dtype=torch.float32)
    drafted = with_mtp(base, 2).float()       # untrained modules: drafts are poor, output must not change
    plain = TorchChatEngine(base, tok, fmt, SMALL, EngineOptions(slots=2, capacity=512))
    mtp = TorchChatEngine(drafted, tok, fmt, SMALL, EngineOptions(slots=2, capacity=512, n_draft=2))
    return plain, mtp


async def _answer(engine, messages) -> str:
    out = []
    async for d in engine.stream(ChatRequest(messages=tuple(messages), temperature=0.0, max_tokens=24)):
        out.append(d.text)
    return "".join(out)


def test_mtp_engine_matches_plain_greedy_across_turns():
    plain, mtp = _engines()
    try:
        async def conversation(engine):
            msgs = [ChatMessage("user", "Give me three facts about the moon.")]
            first = await _answer(engine, msgs)
            msgs += [ChatMessage("assistant", first), ChatMessage("user", "And one about the sun?")]
            second = await _answer(engine, msgs)          # reuses the cached prefix of turn one
            return first, second

        want = asyncio.run(conversation(plain))
        got = asyncio.run(conversation(mtp))
        assert got == want
        assert mtp.stats["reused_tokens"] > 0
        assert mtp.stats["tokens"] >= mtp.stats["steps"]  # >= 1 token per step, more when drafts hit
    finally:
        plain.close()
        mtp.close()
