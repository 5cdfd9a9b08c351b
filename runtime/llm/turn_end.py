"""Is the user's turn over? The chat model's own answer, from the words so far (the text half of semantic_vad).

The conversation is rendered as the model reads it, with the user's turn left open and its trailing punctuation
taken off (Whisper punctuates a half sentence as readily as a whole one). P(end) is the model's probability that
the next token ends the sentence or the turn: `?`, `.`, `!` (alone or with a newline) or the end-of-turn token.
A model that has read "Can you tell me" expects more words (P(end) < 0.0001 on the packaged Qwen2.5 0.5B);
after "What is the capital of France" it expects "?" (0.89); short complete turns ("Yes", "Tell me a joke")
score 0.03–0.05. The same signal LiveKit's turn detector is trained for, here read off the chat model already
loaded, with no training. bench/voice_turn.py's pause set measures what it does to false cut-offs.

The request shares its prefix with the answer that follows (the same conversation, the same user words), so
llama.cpp's prompt cache keeps the prefill it did here for the response. Only the llama.cpp engine answers
(it hands out next-token log-probabilities); other engines give None, and the turn ends on audio and silence.
"""

from __future__ import annotations

import asyncio
import math
import string
from collections.abc import Sequence

from runtime.chat_api import ChatMessage

TOP_K = 20  # next-token candidates read: the end mass outside them is negligible for a decision at 1 %
_ENDS = ("?", ".", "!")
_TRAILING = string.punctuation + string.whitespace + "…"


def open_turn(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The messages with the last (the user's words so far) stripped of its trailing punctuation."""
    *head, last = messages
    if last.role != "user" or not isinstance(last.content, str):
        raise ValueError("the last message must be the user's words so far, as text")
    return [*head, ChatMessage("user", last.content.rstrip(_TRAILING))]


def end_mass(candidates: Sequence[tuple[str, int, float]], end_of_turn_ids: Sequence[int]) -> float:
    """Sum of P over next-token `candidates` (text, id, log-prob) that end the sentence or the turn."""
    return sum(math.exp(logprob) for text, token_id, logprob in candidates
               if token_id in end_of_turn_ids or text.strip()[:1] in _ENDS)


async def end_of_turn_probability(engine, messages: Sequence[ChatMessage]) -> float | None:
    """P(the user's turn is over) after `messages` (the last one: the user's words so far), or None where the
    engine cannot tell (not llama.cpp, or nothing said yet). Runs off the event loop."""
    from runtime.llm.llamacpp_engine import LlamaCppChatEngine

    if not isinstance(engine, LlamaCppChatEngine) or engine.server is None:
        return None
    turn = open_turn(messages)
    if not turn[-1].content:
        return None
    return await asyncio.to_thread(_judge, engine, turn)  # rendering and tokenizing a long conversation too


def _judge(engine, turn: list[ChatMessage]) -> float | None:
    fmt = engine.format
    pieces = fmt.render(turn, add_generation_prompt=False)
    if pieces[-2:] != [fmt.im_end, "\n"]:
        raise AssertionError(f"{fmt.name}: a rendered turn does not end with its end-of-turn token")
    ids = engine.tokenizer.encode_pieces(pieces[:-2])
    if len(ids) > engine.max_prompt_tokens:
        return None
    candidates = engine.next_token_candidates(ids, TOP_K)
    return min(1.0, end_mass(candidates, (fmt.im_end, *engine.tokenizer.stop_ids)))
