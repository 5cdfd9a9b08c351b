"""Text tokenizer of the embedded LLMs: an HF ``tokenizers`` BPE built from the GGUF vocabulary.

GGUF stores a byte-level BPE as ``tokenizer.ggml.tokens`` / ``merges`` / ``token_type`` plus a
pre-tokenizer name (``tokenizer.ggml.pre``); :func:`build_tokenizer` turns that into the same
``tokenizer.json`` the original HF repository ships (Qwen2: NFC + the Qwen2 split regex; SmolLM:
single digits + the GPT-2 regex). :class:`TextTokenizer` wraps it for the engine: prompt pieces are
encoded so that user text can never smuggle in control tokens, and :class:`IncrementalDetokenizer`
turns a token stream into text deltas without ever cutting a UTF-8 character in half.
"""
from __future__ import annotations

import codecs
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

# GGUF token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
#: Control tokens that end an assistant turn.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def build_tokenizer(meta: dict[str, Any]):
    """A ``tokenizers.Tokenizer`` from GGUF metadata (``gguf_convert.read_metadata`` output)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model {meta.get('tokenizer.ggml.model')!r} "
                         "(only byte-level BPE, 'gpt2', is supported)")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta["tokenizer.ggml.token_type"]
    vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty != UNUSED}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        if pre != "gpt2":
            log.warning("GGUF pre-tokenizer %r not known; using the GPT-2 split (check the tokenization)", pre)
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    added = [AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False)
             for i in range(len(tokens)) if types[i] in (CONTROL, USER_DEFINED)]
    tok.add_tokens(added)
    return tok


def special_token_ids(meta: dict[str, Any]) -> dict[str, list[int]]:
    tokens = meta["tokenizer.ggml.tokens"]
    return {"stop": [tokens.index(t) for t in STOP_TOKENS if t in tokens]}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode -> byte table (inverse of ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TextTokenizer:
    """Encode prompt pieces and map ids to bytes, for one checkpoint directory's ``tokenizer.json``."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        file = self.path / "tokenizer.json" if self.path.is_dir() else self.path
        self.tok = Tokenizer.from_file(str(file))
        self._text = Tokenizer.from_file(str(file))
        self._text.encode_special_tokens = True      # user text: "<|im_start|>" is just characters
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        specials = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        bd = _byte_decoder()
        table: dict[int, bytes] = {}
        for piece, i in self.tok.get_vocab(with_added_tokens=True).items():
            if piece in specials:
                table[i] = b""                         # control tokens never reach the text
            elif i in self.tok.get_added_tokens_decoder():
                table[i] = piece.encode()              # e.g. <tool_call>: literal text
            else:
                table[i] = bytes(bd[c] for c in piece)
        self._bytes = [table.get(i, b"") for i in range(max(table) + 1)]
        #: the most bytes one token covers: a text of n characters needs at least n / this many tokens
        self.max_token_bytes = max(1, max(len(b) for b in self._bytes))
        self.stop_ids = tuple(i for i in (self.tok.token_to_id(t) for t in STOP_TOKENS) if i is not None)

    def token_id(self, piece: str) -> int:
        i = self.tok.token_to_id(piece)
        if i is None:
            raise KeyError(f"token {piece!r} not in the vocabulary")
        return i

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids; control-token strings in ``text`` are encoded as ordinary characters,
        while non-special added tokens (Qwen's ``<tool_call>``) keep their single id."""
        # encode_batch releases the GIL while it works (encode holds it: 2.4 s of a 2.4 MB prompt stalled every
        # thread of the process, the event loop included, though it ran in a worker thread)
        return self._text.encode_batch([text], add_special_tokens=False)[0].ids if text else []

    def encode_pieces(self, pieces: Iterable[str | int]) -> list[int]:
        """Prompt pieces: ``int`` = a token id (control tokens), ``str`` = text."""
        out: list[int] = []
        for p in pieces:
            out.extend([p] if isinstance(p, int) else self.encode(p))
        return out

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id] if 0 <= token_id < len(self._bytes) else b""

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def detokenizer(self) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self)


class IncrementalDetokenizer:
    """Token ids in, text out: a multi-byte character split across tokens is held back until whole."""

    def __init__(self, tok: TextTokenizer) -> None:
        self.tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Iterable[int]) -> str:
        return "".join(self._utf8.decode(self.tok.token_bytes(i)) for i in ids)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
