"""What Whisper is told before it hears a user turn: the client's prompt, then what the assistant last said.

Whisper's prompt is "the text before this audio". In a conversation that is the assistant's last words — a
question names the words its answer will use ("Which city is the forecast for?" → "Boston"). Measured on
phone-bot answers in voices the service was never tuned on (bench/phone_asr.py, RESULTS.md "Phone-line ASR"):
with the bot's question as prompt, WER fell from 30.7% to 20.2% at 16 kHz and from 47.6% to 41.7% through the
Twilio path. Only what the user heard counts: a truncated answer's transcript is already cut to the heard part.
"""

from __future__ import annotations

from realtime.items import Conversation

#: Whisper takes up to 223 prompt tokens; a sentence or two is what helps, more only adds what was not said now
MAX_PROMPT_CHARS = 240


def last_assistant_words(conversation: Conversation, before: str | None = None,
                         max_chars: int = MAX_PROMPT_CHARS) -> str | None:
    """The end of the last assistant message before item `before` (None: the end of the conversation), cut at a
    word boundary; None when the assistant has not spoken."""
    items = conversation.items
    if before is not None and before in conversation:
        items = items[:next(i for i, it in enumerate(items) if it.id == before)]
    for item in reversed(items):
        if item.type == "message" and item.role == "assistant":
            text = " ".join(item.text_for_model().split())
            if not text:
                return None
            if len(text) > max_chars:
                text = text[-max_chars:]
                text = text.split(" ", 1)[1] if " " in text else text
            return text
    return None


def transcription_prompt(configured: str | None, conversation: Conversation, before: str | None = None) -> str | None:
    """The configured prompt (the client's vocabulary) followed by the assistant's last words before `before`."""
    parts = [p.strip() for p in (configured, last_assistant_words(conversation, before)) if p and p.strip()]
    return " ".join(parts) or None
