"""The decode engine: one model, a batch of session slots, plain or MTP (draft + verify) steps.

This is the one place where the parts are wired: the model's cached forward, the :class:`Sampler`
(with its logit filters), a :class:`Drafter` (MTP by default) and a verifier. ``n_draft = 0`` is
plain decoding and runs the very same step (verify one token, no drafts).

A step for every slot at once (static shapes, no host sync)::

    verify   tokens[n .. n+K] = [pending, d_1 .. d_K] through the backbone at positions n .. n+K
    accept   a drafts + one next token (GreedyVerifier / RejectionVerifier); n <- n + a + 1
    propose  MTP depths 1..K over the window [n_old-K+1, n_old+K] (re-writes their stale cache
             entries and drafts d'_1 .. d'_K from the new proposal position n-1)

Rejected entries are never erased: the KV caches are indexed by position and masked by position, so
moving ``n`` back is the whole rollback (see :mod:`runtime.state`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from runtime.drafter import Drafter, DraftWindow, MTPDrafter
from runtime.kernel_step import choose_step_forward
from runtime.model import AudioLM
from runtime.sampling import GREEDY, Sampler, SamplingParams
from runtime.state import DecodeState, KVCache
from voxcore.verify import GreedyVerifier, RejectionVerifier


@dataclass
class SlotInfo:
    """Host-side mirror of one slot (what the scheduler needs without reading the device)."""

    length: int = 0            # n: positions in the backbone cache
    has_pending: bool = False  # tokens[n] holds a sampled token not yet fed to the backbone
    params: SamplingParams = field(default_factory=lambda: GREEDY)


class DecodeEngine:
    """Runs plain or MTP decoding for ``batch`` slots of one :class:`AudioLM`.

    ``n_draft`` (0..model.config.n_mtp) is the number of MTP drafts per step; ``capacity`` is the
    KV cache length per slot. A session uses one slot: :meth:`reset` it, :meth:`extend` it with its
    prompt (returns the first sampled token), then :meth:`step` all slots together.
    """

    def __init__(self, model: AudioLM, batch: int = 1, capacity: int = 512, n_draft: int = 0,
                 seed: int = 0, drafter: Drafter | None = None, kernel_backend: str | None = None) -> None:
        self.model = model.eval()
        # The step's backbone forward: the Triton kernels where their dispatcher picks them (CUDA),
        # the model's own forward elsewhere (kernel_backend as in kernels.backend; see runtime.kernel_step).
        self.step_forward = choose_step_forward(self.model, kernel_backend)
        self.drafter = drafter or MTPDrafter()
        self.n_draft = n_draft
        dev = next(model.parameters()).device
        self.state = DecodeState.allocate(model, batch, capacity, n_draft, sampling=True)
        self.sampler = Sampler(batch, device=dev)
        self.greedy_verifier = GreedyVerifier()
        self.rejection_verifier = RejectionVerifier(self.sampler)
        self.generator = torch.Generator(device=dev).manual_seed(seed)
        self.slots = [SlotInfo() for _ in range(batch)]
        self._parked = [0] * batch   # cached positions a parked slot still holds (see park)
        # Backbone hidden states of the last extend ([1, T, D]) or step ([B, K+1, D]); a reference,
        # not a copy. Self-distillation (train_mtp) reads it instead of re-running the backbone.
        self.last_hidden: torch.Tensor | None = None
        self._offsets = torch.arange(max(2 * n_draft, n_draft + 1), device=dev)
        self._full_kv, self._full_mtp_kv = self.state.kv, self.state.mtp_kv   # see attend_over

    @property
    def batch(self) -> int:
        return self.state.batch

    @property
    def capacity(self) -> int:
        return self.state.capacity

    def room(self, slot: int) -> int:
        """How many more tokens slot ``slot`` can take before a step would run out of cache."""
        return self.capacity - (self.slots[slot].length + 2 * self.n_draft + 2)

    # ---- session lifecycle (host side, outside the hot step) ----------------------------------------
    def reset(self, slot: int | range, params: SamplingParams = GREEDY, keep: int = 0) -> None:
        """Give slot ``slot`` (or a range of slots) to a new session that keeps the first ``keep``
        cached positions of the slot's previous one (prefix reuse: 0 = start empty).

        Entries at ``keep`` and beyond become unreachable because attention masks by position and
        the length goes back to ``keep``; the kept positions stay valid because they were computed
        from the same tokens (:meth:`cached_tokens` says which). The slot has no pending token: the
        next :meth:`extend` feeds the rest of the prompt (at least one token) and samples from it.
        """
        slots = _as_range(slot)
        held = min(self._held(b) for b in slots)
        if not 0 <= keep <= held:
            raise ValueError(f"keep={keep}: slot {slot} holds only {held} cached positions")
        self.state.lengths[slots.start:slots.stop] = keep
        for b in slots:
            self.slots[b] = SlotInfo(length=keep, params=params)
            self._parked[b] = 0
        self.sampler.set(slots, params)

    def park(self, slot: int) -> None:
        """A finished session leaves slot ``slot``: its length goes to 0 and its params to greedy, so
        length buckets and the all-greedy fast path ignore it, while its cached positions stay there
        for a later ``reset(slot, keep=n)``."""
        held = self._held(slot)
        self.reset(slot, GREEDY)
        self._parked[slot] = held

    def cached_tokens(self, slot: int) -> list[int]:
        """The tokens whose keys and values slot ``slot`` holds (positions ``0 ..``), parked or live."""
        return self.state.tokens[slot, :self._held(slot)].tolist()

    def _held(self, slot: int) -> int:
        return max(self.slots[slot].length, self._parked[slot])

    def attend_over(self, positions: int) -> None:
        """Let the next forwards see only the first ``positions`` cache positions of every slot.

        The caches are allocated once at ``capacity``; a view cut to what the live slots need makes
        attention cost what the conversation needs (length buckets). Writes go to the full buffers.
        """
        if not 1 <= positions <= self.capacity:
            raise ValueError(f"positions={positions} must be in 1..{self.capacity}")
        full = self._full_kv
        self.state.kv = KVCache(full.k[:, :, :, :positions], full.v[:, :, :, :positions])
        if self._full_mtp_kv is not None:
            m = self._full_mtp_kv
            self.state.mtp_kv = KVCache(m.k[:, :, :, :positions], m.v[:, :, :, :positions])

    def commit(self, num_new: Sequence[int]) -> None:
        """Host bookkeeping after a step, given ``num_new`` read back by the caller (its one sync)."""
        for info, m in zip(self.slots, num_new):
            info.length += m

    def rollback(self, slot: int, drop: int) -> None:
        """Forget the last ``drop`` committed tokens of slot ``slot`` (e.g. drafts accepted past a
        stop token), so the slot is exactly as if decoding had stopped there. Only the length moves;
        its drafts are stale until the next :meth:`extend`."""
        if drop:
            info = self.slots[slot]
            info.length -= drop
            self.state.lengths[slot] = info.length

    @torch.no_grad()
    def extend(self, slot: int | range, tokens: Sequence[int] | torch.Tensor,
               chunk: int | None = None, embeds: torch.Tensor | None = None) -> int | list[int]:
        """Feed ``tokens`` (after the slot's pending token, if any) and sample the next token.

        ``embeds [S, L, D]`` (optional) are the input vectors of ``tokens`` where they are not the
        embedding table's rows (Step-Audio 2's audio-encoder rows at ``<audio_patch>`` placeholders);
        the ids are still stored, so the cache's token record stays complete.

        ``slot`` may be a range of slots in the same situation (same length, same pending state),
        with ``tokens [S, L]``: sessions that join together are prefilled in one batch.
        Runs the backbone in chunks of ``chunk`` positions (None = one shot), samples the new pending
        token, then catches the MTP caches up and proposes the first drafts. Returns the new
        token (a list for a range).
        """
        slots = _as_range(slot)
        infos = [self.slots[b] for b in slots]
        if len({(i.length, i.has_pending) for i in infos}) != 1:
            raise ValueError(f"slots {slots} differ in length or pending state; extend them one by one")
        st = self.state.slots(slots.start, slots.stop)
        sampler = self.sampler.view(slots.start, slots.stop)
        dev = st.tokens.device
        new = torch.as_tensor(tokens, dtype=torch.long, device=dev).reshape(len(slots), -1)  # [S, L]
        n0 = infos[0].length
        start = n0 + int(infos[0].has_pending)
        n_end = start + new.shape[1]
        if n_end == n0:
            raise ValueError("extend() needs at least one token for a slot without a pending token")
        if n_end + 2 * self.n_draft + 2 > self.capacity:
            raise ValueError(f"slot {slot}: {n_end} positions do not fit in capacity {self.capacity} "
                             f"with {self.n_draft} drafts; allocate a larger cache")
        st.tokens[:, start:n_end] = new
        step = chunk or (n_end - n0)
        vectors = None
        if embeds is not None:
            if tuple(embeds.shape[:2]) != tuple(new.shape):
                raise ValueError(f"embeds {tuple(embeds.shape)} do not match tokens {tuple(new.shape)}")
            head = self.model.model.embed_tokens(st.tokens[:, n0:start])          # the pending token, if any
            vectors = torch.cat([head, embeds.to(device=dev, dtype=head.dtype)], dim=1)  # [S, n_end - n0, D]
        hs = []
        for c0 in range(n0, n_end, step):
            c1 = min(c0 + step, n_end)
            pos = torch.arange(c0, c1, device=dev).expand(len(slots), -1)        # [S, C]
            if vectors is None:
                hs.append(self.model(st.tokens[:, c0:c1], pos, st.kv))          # [S, C, D]
            else:
                hs.append(self.model(st.tokens[:, c0:c1], pos, st.kv, inputs_embeds=vectors[:, c0 - n0:c1 - n0]))
        h = torch.cat(hs, dim=1)                                                 # [S, n_end - n0, D]
        self.last_hidden = h
        logits = self.model.logits(h[:, -1])                                     # [S, V]
        nxt = (logits.argmax(-1) if sampler.all_greedy
               else Sampler.sample(sampler.probs(logits[:, None])[:, 0], self.generator))
        st.tokens[:, n_end] = nxt
        st.lengths.fill_(n_end)
        for info in infos:
            info.length, info.has_pending = n_end, True
        if self.n_draft:
            k, ring = self.n_draft, st.ring
            s = max(n0 - k + 1, 0)
            # Hidden states for the window [s, n_end): old ones from the ring (read before writing).
            old = st.hidden[:, torch.arange(s, n0, device=dev) % ring]           # [S, n0-s, D]
            win_h = torch.cat([old, h], dim=1)
            keep = min(ring, n_end - n0)
            st.hidden[:, torch.arange(n_end - keep, n_end, device=dev) % ring] = h[:, -keep:]
            pos = torch.arange(s, n_end, device=dev).expand(len(slots), -1)
            last = torch.full((len(slots),), n_end - 1 - s, device=dev)
            win = DraftWindow(win_h, pos, last, st.lengths, None, slots)
            self.drafter(self.model, st, sampler, win, self.generator)
        out = nxt.tolist()
        return out[0] if isinstance(slot, int) else out

    # ---- the hot step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None, rows: range | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One verify step for all slots, or for the slots ``rows`` (a range from 0: the live ones, so a half-empty
        batch does not pay for its empty slots). active [len(rows) or B] bool (None = all).

        Returns new_tokens [B, K+1] and num_new [B]: slot b emitted ``new_tokens[b, :num_new[b]]``
        (inactive slots emit nothing and keep their state). No host sync happens in here.
        """
        k, cap = self.n_draft, self.capacity
        if rows is None or (rows.start == 0 and rows.stop == self.batch):
            st, sampler, rejection = self.state, self.sampler, self.rejection_verifier
        else:
            if rows.start != 0 or rows.step != 1 or not 0 < rows.stop <= self.batch:
                raise ValueError(f"rows must be range(0, n) with 0 < n <= {self.batch}, got {rows}")
            st, sampler = self.state.slots(0, rows.stop), self.sampler.view(0, rows.stop)
            rejection = RejectionVerifier(sampler)
        b = st.batch
        if active is None:
            active = torch.ones(b, dtype=torch.bool, device=st.tokens.device)
        n = st.lengths.clone()                                                # [B]
        vpos = (n[:, None] + self._offsets[:k + 1]).clamp(max=cap - 1)       # [B, K+1]
        vtok = st.tokens.gather(1, vpos)                                      # [pending, d_1..d_K]
        h = self.step_forward(vtok, vpos, st.kv)                              # [B, K+1, D]
        self.last_hidden = h
        logits = self.model.logits(h)                                         # [B, K+1, V]
        if sampler.all_greedy:   # host-side flag: decided per configuration, not per step
            n_acc, nxt = self.greedy_verifier(logits, vtok[:, 1:], None, self.generator)
        else:
            n_acc, nxt = rejection(logits, vtok[:, 1:], st.draft_probs, self.generator)
        num_new = torch.where(active, n_acc + 1, torch.zeros_like(n_acc))    # [B]
        bpos = (n + n_acc + 1).clamp(max=cap - 1)[:, None]
        nxt = torch.where(active, nxt, st.tokens.gather(1, bpos)[:, 0])      # inactive: unchanged
        st.tokens.scatter_(1, bpos, nxt[:, None])
        out_pos = (n[:, None] + 1 + self._offsets[:k + 1]).clamp(max=cap - 1)
        new_tokens = st.tokens.gather(1, out_pos)                             # [B, K+1]
        n_new = n + num_new
        st.lengths.copy_(n_new)
        if k:
            ring = st.ring
            st.hidden.scatter_(1, (vpos % ring)[..., None].expand_as(h), h)
            s = (n - k + 1).clamp(min=0)                                      # window start [B]
            wpos = (s[:, None] + self._offsets[:2 * k]).clamp(max=cap - 1)    # [B, 2K]
            win_h = st.hidden.gather(1, (wpos % ring)[..., None].expand(b, 2 * k, h.shape[-1]))
            last = (n_new - 1 - s).clamp(min=0)   # proposal index; only inactive K=1 slots clamp
            win = DraftWindow(win_h, wpos, last, n_new, active, range(b))
            self.drafter(self.model, st, sampler, win, self.generator)
        return new_tokens, num_new


def _as_range(slot: int | range) -> range:
    if isinstance(slot, range):
        if slot.step != 1 or len(slot) == 0:
            raise ValueError(f"slot ranges must be non-empty and contiguous, got {slot}")
        return slot
    return range(slot, slot + 1)
