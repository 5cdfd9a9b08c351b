"""Step-Audio 2 mini: the Qwen2 LLM (runtime.model.AudioLM) with the audio encoder and adapter, official key names.

State-dict keys are exactly the official checkpoint's: ``model.*`` and ``lm_head.weight`` (the Qwen2 LLM, SPEC §7),
``encoder.*`` (§4) and ``adapter.*`` (§5). The class *is* an :class:`AudioLM` and keeps its forward, so
runtime/engine.DecodeEngine (and its Triton decode step) drives the LLM part unchanged; audio enters only through a
prefill's ``inputs_embeds`` built by :meth:`StepAudio2ForCausalLM.embed_prompt` (§6).
"""
from __future__ import annotations

import torch

from runtime.model import AudioLM
from runtime.state import KVCache
from runtime.step_audio2.config import StepAudio2Config
from runtime.step_audio2.encoder import Adapter, AudioEncoder

AUDIO_START_ID = 151688   # hard-coded in the reference forward as the replacement trigger (SPEC §2, §6)


class StepAudio2ForCausalLM(AudioLM):
    """``AudioLM`` over the 158720-row vocabulary plus ``encoder`` and ``adapter`` (absent for a text-only config)."""

    def __init__(self, cfg: StepAudio2Config) -> None:
        super().__init__(cfg.lm)
        self.step_config = cfg
        if cfg.audio is not None:
            self.encoder = AudioEncoder(cfg.audio)
            self.adapter = Adapter(cfg.audio)

    @property
    def has_audio(self) -> bool:
        return self.step_config.audio is not None

    def encode_audio(self, mels: torch.Tensor, mel_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mels [N, n_mels, T] (zero-padded), mel_lens [N] (frames - 2) -> adapter rows [N, n_max, D], lengths [N]."""
        if not self.has_audio:
            raise ValueError("this Step-Audio 2 model was built from a text-only config: it has no audio encoder")
        hidden, lens = self.encoder(mels, mel_lens.long())
        return self.adapter(hidden, lens)

    def embed_prompt(self, ids: torch.Tensor, mels: torch.Tensor | None = None,
                     mel_lens: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, L] -> inputs_embeds [B, L, D] with the audio rows in place (SPEC §6).

        For the k-th 151688 in row-major order, positions p+1 .. p+n_k take the first n_k adapter rows of clip k
        of the mel batch (n_k its adapter length); ``<audio_start>``/``<audio_end>`` keep their own embeddings."""
        embeds = self.model.embed_tokens(ids)
        starts = (ids == AUDIO_START_ID).nonzero().tolist()                     # row-major [(b, p), ...]
        n_clips = 0 if mels is None else mels.shape[0]
        if len(starts) != n_clips:
            raise ValueError(f"the prompt has {len(starts)} <audio_start> (id {AUDIO_START_ID}) but {n_clips} "
                             "audio clips were given")
        if not n_clips:
            return embeds
        rows, lens = self.encode_audio(mels, mel_lens)
        embeds = embeds.clone()
        for k, (b, p) in enumerate(starts):
            n = int(lens[k])
            if p + 1 + n > ids.shape[1]:
                raise ValueError(f"clip {k} needs {n} placeholder rows after position {p}, but the prompt ends at "
                                 f"{ids.shape[1]}")
            embeds[b, p + 1:p + 1 + n] = rows[k, :n].to(embeds.dtype)
        return embeds


@torch.no_grad()
def greedy_generate(model: AudioLM, inputs_embeds: torch.Tensor, steps: int, use_cache: bool = True,
                    stop_id: int | None = None) -> list[int]:
    """Greedy continuation of one prompt given as inputs_embeds [1, L, D] (from :meth:`embed_prompt`).

    ``use_cache``: prefill once into a :class:`KVCache`, then one token per step; otherwise recompute the whole
    sequence every step (the reference's check path). Stops early after ``stop_id``."""
    out: list[int] = []
    length = inputs_embeds.shape[1]
    param = next(model.parameters())
    cfg = model.config
    if use_cache:
        cache = KVCache.allocate(cfg.n_layers, 1, cfg.n_kv_heads, length + steps, cfg.head_dim, param.dtype,
                                 param.device)
        pos = torch.arange(length, device=param.device)[None]
        hidden = model(None, pos, cache, inputs_embeds=inputs_embeds)
        for i in range(steps):
            token = int(model.logits(hidden[:, -1]).argmax(-1))
            out.append(token)
            if token == stop_id or i == steps - 1:
                break
            pos = torch.tensor([[length + i]], device=param.device)
            hidden = model(torch.tensor([[token]], device=param.device), pos, cache)
        return out
    embeds = inputs_embeds
    for _ in range(steps):
        token = int(model.logits(model(None, inputs_embeds=embeds)[:, -1]).argmax(-1))
        out.append(token)
        if token == stop_id:
            break
        nxt = model.model.embed_tokens(torch.tensor([[token]], device=param.device)).to(embeds.dtype)
        embeds = torch.cat([embeds, nxt], dim=1)
    return out
