"""Multi-token prediction for the Whisper decoder: MTP heads, a drafter, and verify-then-accept decoding.

Heads (DeepSeek-V3 layout, as :mod:`runtime.model`): head ``k`` (0-based) at position ``i`` reads the
previous depth's state and the embedding of token ``i+k+1`` and predicts token ``i+k+2``::

    g_i^k = Block_k( P_k [ hnorm(g_i^{k-1}) ; enorm(Emb(t_{i+k+1})) ] )        g^{-1} = decoder hidden
    draft = argmax( norm_k(g_i^k) . Emb[draft_ids]^T )

``Block_k`` is a Whisper decoder block (self-attention with its own KV cache, cross-attention, MLP) whose
cross-attention reuses the decoder's last layer's audio keys/values — computed once per utterance
anyway, so a head costs no extra audio projection. The embedding and the output head are the decoder's
own (shared, not stored); drafts are scored over ``draft_ids``, a frequent-token subset of the vocabulary
(BPE ids in merge order plus end-of-text and every id seen in training), because a full 51865-way head
per draft would cost as much as a decoder pass. Drafts only decide how many tokens a step yields: the
decoder checks each one, so the output never depends on them.

Decoding (:func:`mtp_decode`): propose ``k`` drafts; run the decoder once over ``[pending, d_1..d_k]``
with its KV cache; keep the longest prefix of drafts equal to the decoder's (suppression-filtered)
argmax — :class:`voxcore.verify.GreedyVerifier` — plus the decoder's own next token; "roll back" the
rejected positions by moving the length (stale cache entries are overwritten before they are read).
The committed tokens are exactly plain greedy decoding's.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from asr.torch_whisper.decode import DecodeResult, GreedyOptions, LogitFilter, Vocab, prompt_outputs
from asr.torch_whisper.model import DecoderBlock, Whisper
from voxcore.verify import GreedyVerifier


class MTPHead(nn.Module):
    """One depth: input norms, the [hidden; embedding] projection, one decoder block, an output norm."""

    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.hnorm, self.enorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.block = DecoderBlock(d, n_head, cross_kv=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, prev: torch.Tensor, emb: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
        """prev, emb [B, T, D] at positions ``start ..`` -> g [B, T, D] (before ``norm``; chained)."""
        x = self.proj(torch.cat([self.hnorm(prev), self.enorm(emb)], dim=-1))
        return self.block(x, cross_k, cross_v, cache, start)


class WhisperMTP(nn.Module):
    """``n_depth`` MTP heads for one Whisper decoder, drafting over ``draft_ids``."""

    def __init__(self, model: Whisper, n_depth: int, draft_ids: torch.Tensor) -> None:
        super().__init__()
        d = model.dims
        self.heads = nn.ModuleList(MTPHead(d.n_text_state, d.n_text_head) for _ in range(n_depth))
        self.register_buffer("draft_ids", draft_ids.long().sort().values)
        self._decoder = [model.decoder]  # shared embedding; a list so it is not a submodule
        self.draft_head = DraftHead(self)

    def set_draft_ids(self, ids: torch.Tensor) -> None:
        self.draft_ids = ids.long().sort().values.to(self.draft_ids.device)

    @property
    def n_depth(self) -> int:
        return len(self.heads)

    @property
    def embedding(self) -> nn.Embedding:
        return self._decoder[0].token_embedding

    def head_logits(self, depth: int, g: torch.Tensor) -> torch.Tensor:
        """g [..., D] -> logits over ``draft_ids`` [..., N]."""
        return self.draft_head(self.heads[depth].norm(g))

    def offline(self, hidden: torch.Tensor, tokens: torch.Tensor, cross_k: torch.Tensor,
                cross_v: torch.Tensor, n_depth: int | None = None) -> list[torch.Tensor]:
        """All depths over whole sequences, no cache (training and reference checks).

        hidden [B, T, D] = decoder states at positions 0..T-1; tokens [B, L] with L >= T + 1. Depth k at
        position i reads tokens[:, i+k+1]; entry k of the result is g [B, min(T, L-k-1), D].
        """
        out, g = [], hidden
        for k in range(n_depth or self.n_depth):
            length = min(g.shape[1], tokens.shape[1] - k - 1)
            if length <= 0:
                break
            emb = self.embedding(tokens[:, k + 1:k + 1 + length])
            g = self.heads[k](g[:, :length], emb, cross_k, cross_v)
            out.append(g)
        return out

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path, meta: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.float() if v.is_floating_point() else v).detach().contiguous()
                   for k, v in self.state_dict().items()}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"n_depth": str(self.n_depth), **(meta or {})})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, model: Whisper, path: str | Path) -> "WhisperMTP":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            n_depth = int(fh.metadata()["n_depth"])
            sd = {k: fh.get_tensor(k) for k in fh.keys()}
        mtp = cls(model, n_depth, sd["draft_ids"])
        mtp.load_state_dict(sd, strict=True)
        return mtp.eval().requires_grad_(False)


class DraftHead(nn.Module):
    """Scores over ``draft_ids`` with the shared embedding rows (gathered per call; swappable for a packed copy)."""

    def __init__(self, mtp: WhisperMTP) -> None:
        super().__init__()
        self._mtp = [mtp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mtp = self._mtp[0]
        return x @ mtp.embedding.weight[mtp.draft_ids].T


class FrozenDraftHead(nn.Module):
    """Inference copy of :class:`DraftHead`: the ``draft_ids`` rows gathered once, oneDNN-packed when
    available (else transposed for a fast one-row product)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        from asr.torch_whisper import packed

        self.linear = packed.PackedLinear(weight, None, persistent=False) if packed.available() else None
        self.weight_t = weight.detach().t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if self.linear is not None else x @ self.weight_t


def freeze_for_inference(mtp: WhisperMTP, bf16: bool | None = None) -> WhisperMTP:
    """Eval mode, no grads, packed linears and a pre-gathered draft head (in place; after training).

    ``bf16`` (default: when this CPU has AVX-512 BF16 and oneDNN) runs the heads in bfloat16: drafting
    reads half the bytes, and drafts need not be exact — the float32 decoder verifies every one.
    """
    from asr.torch_whisper import packed

    bf16 = packed.bf16_available() if bf16 is None else bf16
    dtype = torch.bfloat16 if bf16 else torch.float32
    mtp.eval().requires_grad_(False)
    mtp.heads.to(dtype)
    packed.pack_heads(mtp.heads)
    mtp.draft_head = FrozenDraftHead(mtp.embedding.weight[mtp.draft_ids].to(dtype))
    return mtp


def init_from_decoder(mtp: WhisperMTP, model: Whisper) -> WhisperMTP:
    """Start every head as a copy of the decoder's last block, passing the hidden state through ``proj``
    (the embedding half starts at zero) and ending with the decoder's final norm: each head starts as "one
    more decoder layer" and training teaches it the shift to the token after next."""
    last, d = model.decoder.blocks[-1], model.dims.n_text_state
    with torch.no_grad():
        for head in mtp.heads:
            # state_dict works on a packed decoder too (PackedLinear keeps nn.Linear's names)
            sd = {k: v for k, v in last.state_dict().items() if not k.startswith("cross.kv")}
            head.block.load_state_dict(sd, strict=True)
            head.proj.weight.zero_()
            head.proj.weight[:, :d].copy_(torch.eye(d))
            head.norm.load_state_dict(model.decoder.ln.state_dict())
    return mtp


def default_draft_ids(vocab: Vocab, n_first: int = 8192, extra: list[int] | None = None) -> torch.Tensor:
    """The first ``n_first`` BPE ids (merge order ~ frequency), end-of-text and ``extra`` (e.g. ids seen in
    training), minus ids the decoder never emits (suppressed)."""
    ids = set(range(n_first)) | {vocab.eot} | set(extra or ())
    return torch.tensor(sorted(ids - set(vocab.suppress)))


# ---- decoding -------------------------------------------------------------------------------------
class MTPDrafter:
    """Proposes up to ``k`` tokens after each verify step with the MTP chain (one utterance, batch 1).

    Head ``j``'s KV entries at positions ``< valid[j]`` were computed from committed inputs only. A
    proposal at ``n`` fed positions (pending token ``t_n``) runs heads ``0, 1, ..`` in turn over the
    window ``min(valid) .. n-1``; head ``j`` there reads ``t_{i+j+1}``, a draft where ``i + j + 1 > n``, so
    afterwards ``valid[j] = n - j``. Drafting stops early once a head's top probability is below
    ``min_confidence``: an unlikely draft costs a head pass and is probably rejected. Heads not run keep
    their old (still clean) entries and catch up through a wider window next time.
    """

    def __init__(self, mtp: WhisperMTP, k: int, capacity: int, cross_k: torch.Tensor, cross_v: torch.Tensor,
                 min_confidence: float = 0.0) -> None:
        if not 1 <= k <= mtp.n_depth:
            raise ValueError(f"k={k} drafts need 1..{mtp.n_depth} MTP heads")
        self.mtp, self.k, self.min_confidence = mtp, k, min_confidence
        self.dtype = next(mtp.heads.parameters()).dtype
        # the decoder's last layer's audio keys/values, in the heads' dtype: [B, H, Dh, A], [B, H, A, Dh]
        self.cross_k, self.cross_v = cross_k[-1].to(self.dtype), cross_v[-1].to(self.dtype)
        b, h, dh, _ = self.cross_k.shape
        shape = (k, b, h, capacity, dh)
        self.kv = (self.cross_k.new_empty(shape), self.cross_k.new_empty(shape))   # read only once written
        self.valid = [0] * k

    def propose(self, hidden: torch.Tensor, tokens: list[int], n: int) -> list[int]:
        """hidden [S, D]: decoder states at 0..n-1; tokens: the n committed ids plus the pending one."""
        mtp, lo = self.mtp, min(self.valid)
        g = hidden[lo:n][None].to(self.dtype)                                   # [1, W, D]
        ext, drafts = list(tokens), []
        for j in range(self.k):
            ids = torch.tensor([ext[lo + j + 1:n + j + 1]])                     # t_{i+j+1}, [1, W]
            g = mtp.heads[j](g, mtp.embedding(ids).to(self.dtype), self.cross_k, self.cross_v,
                             (self.kv[0][j], self.kv[1][j]), lo)
            self.valid[j] = n - j
            logits = mtp.head_logits(j, g[0, -1]).float()                       # [N]
            best = int(logits.argmax())
            if self.min_confidence and float(logits.softmax(-1)[best]) < self.min_confidence:
                break
            drafts.append(int(mtp.draft_ids[best]))
            ext.append(drafts[-1])
        return drafts


@torch.no_grad()
def mtp_decode(model: Whisper, cross_k: torch.Tensor, cross_v: torch.Tensor, vocab: Vocab, filt: LogitFilter,
               opts: GreedyOptions, mtp: WhisperMTP, k: int, min_confidence: float = 0.0) -> DecodeResult:
    """Greedy decoding of one window with up to ``k`` MTP drafts verified per decoder pass (token-identical
    to :func:`asr.torch_whisper.decode.greedy_decode`, whatever the drafts)."""
    t0 = time.perf_counter()
    dec = model.decoder
    cache = model.new_cache(cross_k, cross_v)
    drafter = MTPDrafter(mtp, k, cache.capacity, cross_k, cross_v, min_confidence)
    verify = GreedyVerifier()
    hidden = cross_k.new_empty(cache.capacity, model.dims.n_text_state)          # decoder states by position
    seq = list(vocab.prompt)
    n = len(seq)
    h = dec(torch.tensor([seq]), cross_k, cross_v, cache, 0)[0]                  # [P, D]
    hidden[:n] = h
    no_speech, pending = prompt_outputs(dec, h, vocab, filt, opts)
    out, passes, steps = [pending], 1, []
    while out[-1] != vocab.eot and len(out) < opts.max_new_tokens:
        drafts = drafter.propose(hidden, seq + [pending], n)
        feed = torch.tensor([[pending, *drafts]])                                # [1, k+1]
        h = dec(feed, cross_k, cross_v, cache, n)[0]                             # [k+1, D]
        passes += 1
        logits = filt(dec.logits(h))                                             # [k+1, V]
        n_acc, nxt = verify(logits[None], feed[:, 1:], None, None)              # k = 0 drafts: plain step
        a = int(n_acc[0])
        hidden[n:n + a + 1] = h[:a + 1]
        seq += [pending, *drafts[:a]]
        n += a + 1
        pending = int(nxt[0])
        new = drafts[:a] + [pending]
        if vocab.eot in new:                                                     # plain decoding stops there
            new = new[:new.index(vocab.eot) + 1]
        steps.append(len(new))
        out += new
    out = out[:opts.max_new_tokens]
    text = out[:-1] if out[-1] == vocab.eot else out
    return DecodeResult(text, no_speech, passes, len(out), steps, time.perf_counter() - t0)


def mtp_decoder(mtp: WhisperMTP, k: int, min_confidence: float = 0.0):
    """A window decoder for :meth:`asr.torch_whisper.decode.TorchWhisperASR.transcribe`."""
    def run(model, cross_k, cross_v, vocab, filt, opts):
        return mtp_decode(model, cross_k, cross_v, vocab, filt, opts, mtp, k, min_confidence)

    run.__name__ = f"mtp_decode_k{k}"
    return run
