"""Streaming token2wav flow (SPEC2 §10): codes arrive in chunks of 25 + 3 lookahead, each gives 50 mel frames.

State lives in a :class:`FlowStreamState`, one per stream, never in the model, so one loaded
:class:`~vocoder.step_audio2.flow.StepAudio2Flow` serves any number of sessions:

* :func:`setup_stream` runs the chunk path once on the voice prompt ([prompt codes, their first 3 again],
  cond = prompt mel, noise offset 0) and keeps only the caches. Do it once per voice; each session then takes
  ``voice_state.fork()``, which shares the (never mutated in place) tensors.
* :func:`stream_chunk` turns one chunk of codes into its mel. Encoder: per-layer K/V of every earlier position
  plus the lookahead/upsample conv tails (:class:`~vocoder.step_audio2.flow_encoder.EncoderStreamCache`).
  Estimator: for each of the 10 Euler steps and each DiT block, K/V stored newest chunk first plus the two causal
  conv tails (:class:`~vocoder.step_audio2.dit.DiTBlockCache`). Noise x0 = buffer[offset : offset + frames] with
  offset = the estimator cache length; cond is zeros for generated chunks.
* The estimator cache trim reproduces the reference as it is: once longer than prompt frames + 100, keep its first
  ``prompt frames`` and last 100 entries **as stored**, i.e. the newest chunk's leading frames plus the oldest
  material (the prompt included), not "prompt + most recent 100". It is applied when the next chunk starts, so
  lengths after chunks read 74, 124, 174, 154 for a 12-code prompt and the trimmed length (124) is that chunk's
  noise offset (the noise slices repeat, as in the reference).
* :class:`CodeChunker` does the buffering: synthesise buffer[0:28] whenever 28 codes are held, keep buffer[25:],
  and at the end synthesise what is left as the last chunk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vocoder.step_audio2.cfm import cfg_euler
from vocoder.step_audio2.dit import DiTBlockCache
from vocoder.step_audio2.flow import StepAudio2Flow
from vocoder.step_audio2.flow_encoder import EncoderStreamCache

CHUNK_CODES = 25
LOOKAHEAD_CODES = 3
ESTIMATOR_RECENT_FRAMES = 100  # the trim keeps prompt frames + this many entries (SPEC2 §10)


@dataclass
class FlowStreamState:
    """Everything one stream carries between chunks; reset a session by forking the voice's setup state again."""

    spks: torch.Tensor  # (1, 80) projected speaker vector
    prompt_frames: int  # 2P mel frames of the voice prompt
    encoder: EncoderStreamCache
    estimator: list[list[DiTBlockCache]]  # [Euler step][DiT block]
    keep_recent: int = ESTIMATOR_RECENT_FRAMES

    def fork(self) -> FlowStreamState:
        """An independent copy for a new session (tensors shared: every update replaces them, none is written)."""
        return FlowStreamState(self.spks, self.prompt_frames, self.encoder.fork(),
                               [[dataclasses.replace(c) for c in step] for step in self.estimator], self.keep_recent)

    @property
    def estimator_cache_len(self) -> int:
        return self.estimator[0][0].length if self.estimator and self.estimator[0] else 0

    @property
    def noise_offset(self) -> int:
        """Where the next chunk's noise slice starts: the estimator cache length once the pending trim is done."""
        return min(self.estimator_cache_len, self.prompt_frames + self.keep_recent)

    def trim_estimator_cache(self) -> None:
        """The reference's trim (see the module docstring): keep the first prompt_frames and last keep_recent."""
        if self.estimator_cache_len > self.prompt_frames + self.keep_recent:
            for step in self.estimator:
                for cache in step:
                    cache.keep(self.prompt_frames, self.keep_recent)


def _run_chunk(model: StepAudio2Flow, state: FlowStreamState, codes: torch.Tensor, cond_mel: torch.Tensor | None,
               last_chunk: bool, noise: torch.Tensor | None) -> torch.Tensor:
    dtype = model.encoder_proj.weight.dtype
    xs = model.input_embedding(codes.long())  # the chunk path applies no clamp and no mask (SPEC2 §10)
    h = model.encoder.forward_chunk(xs, state.encoder, last_chunk)
    mu = model.encoder_proj(h).transpose(1, 2)
    cond = torch.zeros_like(mu)
    if cond_mel is not None:
        cond[:, :, :cond_mel.shape[1]] = cond_mel.transpose(1, 2).to(dtype)
    offset = state.noise_offset
    state.trim_estimator_cache()
    x0 = model.noise_slice(offset, mu.shape[2], noise)

    def estimator(x, mask, mu2, t, spks, cond2, step):
        return model.decoder.estimator(x, None, mu2, t, spks, cond2, caches=state.estimator[step])

    return cfg_euler(estimator, x0, mu, state.spks, cond, model.t_span(mu.device), model.decoder.cfg_rate)


@torch.inference_mode()
def setup_stream(model: StepAudio2Flow, prompt_codes: torch.Tensor, prompt_mel: torch.Tensor,
                 spk_emb: torch.Tensor, noise: torch.Tensor | None = None) -> FlowStreamState:
    """The caches of one voice (SPEC2 §10 setup): prompt_codes (1, P), prompt_mel (1, 2P, 80), spk_emb (1, 192)."""
    n_prompt_frames = prompt_codes.shape[1] * model.frames_per_code
    if prompt_mel.shape[1] != n_prompt_frames:
        raise ValueError(f"prompt mel has {prompt_mel.shape[1]} frames, {n_prompt_frames} expected")
    if prompt_codes.shape[1] < LOOKAHEAD_CODES:
        raise ValueError(f"a voice prompt needs at least {LOOKAHEAD_CODES} codes")
    weight = model.encoder_proj.weight
    state = FlowStreamState(
        spks=model.speaker_projection(spk_emb),
        prompt_frames=n_prompt_frames,
        encoder=model.encoder.new_stream_cache(prompt_codes.shape[0], weight.dtype, weight.device),
        estimator=[[DiTBlockCache() for _ in model.decoder.estimator.blocks] for _ in range(model.decoder.n_timesteps)])
    setup_codes = torch.cat([prompt_codes, prompt_codes[:, :LOOKAHEAD_CODES]], dim=1)
    _run_chunk(model, state, setup_codes, prompt_mel, last_chunk=False, noise=noise)  # mel discarded
    return state


@torch.inference_mode()
def stream_chunk(model: StepAudio2Flow, state: FlowStreamState, codes: torch.Tensor, last_chunk: bool = False,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """One chunk: codes (1, n) (n = 25 + 3 lookahead, or any remainder when ``last_chunk``) -> mel (1, 80, 2·emitted),
    emitted = n - 3, or n for the last chunk. Updates ``state``."""
    if codes.dim() == 1:
        codes = codes[None]
    if not last_chunk and codes.shape[1] <= LOOKAHEAD_CODES:
        raise ValueError(f"a chunk needs more than its {LOOKAHEAD_CODES} lookahead codes unless it is the last")
    return _run_chunk(model, state, codes, None, last_chunk, noise)


class CodeChunker:
    """Cut a stream of generated codes into flow chunks (SPEC2 §10): 25 emitted + 3 lookahead, overlap 3."""

    def __init__(self, chunk: int = CHUNK_CODES, lookahead: int = LOOKAHEAD_CODES) -> None:
        self.chunk, self.lookahead = chunk, lookahead
        self._buffer: list[int] = []

    def push(self, codes) -> list[list[int]]:
        """Add codes; returns the chunks that became complete (each chunk + lookahead codes long)."""
        self._buffer.extend(int(c) for c in codes)
        ready = []
        while len(self._buffer) >= self.chunk + self.lookahead:
            ready.append(self._buffer[: self.chunk + self.lookahead])
            self._buffer = self._buffer[self.chunk:]
        return ready

    def finish(self) -> list[int] | None:
        """The last chunk (everything held), or None when nothing is left."""
        rest, self._buffer = self._buffer, []
        return rest or None
