"""The ASR prompt of a user turn: the client's prompt, then the end of what the assistant last said."""

from __future__ import annotations

from realtime.asr_prompt import MAX_PROMPT_CHARS, last_assistant_words, transcription_prompt
from realtime.items import Content, Conversation, Item


def message(item_id: str, role: str, text: str) -> Item:
    kind = "input_text" if role == "user" else "text"
    return Item(item_id, "message", role=role, content=[Content(kind, text=text)])


def test_no_assistant_words_no_prompt():
    conv = Conversation()
    assert transcription_prompt(None, conv) is None
    assert transcription_prompt("  ", conv) is None
    conv.add(message("u1", "user", "hello"))
    assert transcription_prompt("Acme", conv) == "Acme"


def test_the_last_assistant_message_before_the_turn():
    conv = Conversation()
    for item in (message("a1", "assistant", "Hi."), message("u1", "user", "Weather please."),
                 message("a2", "assistant", "Which   city?"), message("u2", "user", "(being transcribed)")):
        conv.add(item)
    assert last_assistant_words(conv, before="u2") == "Which city?"
    assert last_assistant_words(conv, before="u1") == "Hi."
    assert last_assistant_words(conv, before="a1") is None
    assert transcription_prompt("Boston, Austin", conv, before="u2") == "Boston, Austin Which city?"


def test_a_long_answer_keeps_its_end_at_a_word_boundary():
    conv = Conversation()
    words = " ".join(f"word{i}" for i in range(200)) + " Which city?"
    conv.add(message("a1", "assistant", words))
    tail = last_assistant_words(conv)
    assert len(tail) <= MAX_PROMPT_CHARS and tail.endswith("Which city?")
    assert words.endswith(tail) and words[-len(tail) - 1] == " "  # starts on a whole word
