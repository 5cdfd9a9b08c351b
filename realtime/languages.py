"""The languages a transcription may name: Whisper's codes (ISO-639-1, plus `haw` and `yue`).

Checked where a client names a language (HTTP transcriptions, the streaming ASR socket, a realtime
session's `input_audio_transcription`), so a code Whisper does not know is a clear 400 / `error` event
naming the parameter, not a ValueError from deep inside the decoder. tests/security/test_loop_and_memory.py
checks this list against faster-whisper's own.
"""

from __future__ import annotations

WHISPER_LANGUAGES: frozenset[str] = frozenset((
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu hy "
    "id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa "
    "sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue"
).split())


class UnknownLanguage(ValueError):
    """A language code the ASR cannot transcribe; the message says what was sent and what is accepted."""


def whisper_language(value: str | None) -> str | None:
    """`value` as the ASR takes it (lower case; None or "" = detect), or UnknownLanguage."""
    if not value:
        return None
    code = value.strip().lower()
    if code not in WHISPER_LANGUAGES:
        shown = value if len(value) <= 16 else value[:16] + "…"
        raise UnknownLanguage(f"unknown language {shown!r}: use an ISO-639-1 code such as 'en', 'de' or 'fr' "
                              f"(accepted: {', '.join(sorted(WHISPER_LANGUAGES))})")
    return code
