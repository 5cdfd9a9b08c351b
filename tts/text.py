"""Incremental text segmentation for streaming TTS: text arrives in pieces (LLM tokens, typed words)
and is released to the synthesiser one sentence or long clause at a time, so audio starts before the
whole text is known."""

from __future__ import annotations

import re

# A sentence ends at . ! ? … followed by whitespace (so "3.5" and "e.g." inside a word stay put).
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s+")
# A long clause may be cut at , ; : — when waiting for the full stop would delay audio too much.
_CLAUSE_END = re.compile(r"[,;:—]\s+")
_ABBREVIATIONS = ("mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "e.g.", "i.e.", "etc.", "no.")


class SentenceChunker:
    """Feed text pieces with `push`; take ready chunks. `flush` releases whatever is left."""

    def __init__(self, min_clause_chars: int = 60, max_chars: int = 400):
        self.min_clause_chars = min_clause_chars
        self.max_chars = max_chars
        self._buf = ""

    def push(self, piece: str) -> list[str]:
        self._buf += piece
        out: list[str] = []
        while True:
            chunk = self._take()
            if chunk is None:
                return out
            if chunk.strip():
                out.append(chunk.strip())

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []

    def _take(self) -> str | None:
        buf = self._buf
        for m in _SENTENCE_END.finditer(buf):
            head = buf[: m.end()].rstrip()
            if head.lower().endswith(_ABBREVIATIONS):
                continue
            self._buf = buf[m.end() :]
            return head
        if len(buf) >= self.min_clause_chars:
            cut = None
            for m in _CLAUSE_END.finditer(buf):
                if m.start() >= self.min_clause_chars // 2:
                    cut = m
                    break
            if cut is not None:
                self._buf = buf[cut.end() :]
                return buf[: cut.end()]
        if len(buf) >= self.max_chars:  # no punctuation at all: cut at the last space
            space = buf.rfind(" ", 0, self.max_chars)
            cut_at = space if space > 0 else self.max_chars
            self._buf = buf[cut_at:]
            return buf[:cut_at]
        return None
