"""What the two S3 tokenizers share: config, masks, conv front, attention (+RoPE, +FSMN), blocks, the API.

Both tokenizers are Whisper-style encoders over the 128-bin log-mel of voxcore.whisper_mel (Step-Audio 2 SPEC §8,
Step-Audio v1 SPEC §4). They differ only in how position enters (v2: rotary on q/k, v1: a fixed sinusoid table added
after the convs), in v2's FSMN memory next to attention, and in the quantiser. The module names here are the reference
state-dict names (`conv1`, `conv2`, `blocks.N.attn.{query,key,value,out,fsmn_block}`, `attn_ln`, `mlp_ln`, `mlp.0/2`)
so an official checkpoint loads by name through voxcore.strict_load.

Everything in `forward` is plain tensor arithmetic on the lengths (no `.item()`), so the same module traces to ONNX.
`S3Tokenizer` (bottom) is the interface every backend offers — the torch ports and the official ONNX file alike —
with the 30 s windowing of long clips done once, outside any backend.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from voxcore.whisper_mel import log_mel

MASKED_LOGIT = -1e10  # added to the logits of padded keys (SPEC2 §8.5, SPEC1 §4): exp() underflows to exactly 0


@dataclass(frozen=True)
class S3Config:
    """Sizes of one S3 tokenizer. Defaults are the released v2 model's (SPEC2 §8 header); v1 differs in codebook size.

    `from_dict` reads the reference's config.json spelling (n_audio_state, ...) and ignores keys it does not know
    (name, note, full_size_reference).
    """

    n_mels: int = 128
    n_audio_ctx: int = 1500  # v1's sinusoid table rows: the most post-conv frames one call can hold
    n_audio_state: int = 1280
    n_audio_head: int = 20
    n_audio_layer: int = 6
    n_codebook_size: int = 6561
    fsmn_kernel: int = 31
    rope_head_dim: int = 64  # the reference's rotary table is built for head dim 64 whatever the width
    rope_theta: float = 10000.0
    conv1_stride: int = 2  # 2 for the 25 Hz models; the 50 Hz v1 variant uses 1
    ln_eps: float = 1e-5

    @classmethod
    def from_dict(cls, values: dict) -> S3Config:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def head_dim(self) -> int:
        return self.n_audio_state // self.n_audio_head


def conv_out_len(lens: torch.Tensor, stride: int) -> torch.Tensor:
    """Frames after a k3/pad1 Conv1d with this stride: (len − 1) // stride + 1."""
    return torch.div(lens - 1, stride, rounding_mode="floor") + 1


def valid_mask(lens: torch.Tensor, frames: int | torch.Tensor) -> torch.Tensor:
    """[B, frames] bool: frame index < that item's length."""
    return torch.arange(frames, device=lens.device)[None, :] < lens[:, None]


class ConvFront(nn.Module):
    """conv1 (k3, stride 1 or 2) + GELU, conv2 (k3, stride 2) + GELU, each input masked to its valid frames.

    The encoders subclass it so the convs sit at `encoder.conv1` / `encoder.conv2`, as in the reference. Masking
    before each conv keeps padding (in a batch) from leaking into the last valid frames, so a clip's tokens do not
    depend on what it was batched with.
    """

    def __init__(self, cfg: S3Config) -> None:
        super().__init__()
        self.conv1_stride = cfg.conv1_stride
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.n_audio_state, 3, stride=cfg.conv1_stride, padding=1)
        self.conv2 = nn.Conv1d(cfg.n_audio_state, cfg.n_audio_state, 3, stride=2, padding=1)

    def conv_front(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, n_mels, T], lens [B] -> x [B, T'', W] (time-major), lens'' [B]."""
        x = mel * valid_mask(lens, mel.shape[-1])[:, None, :].to(mel.dtype)
        x = F.gelu(self.conv1(x))
        lens = conv_out_len(lens, self.conv1_stride)
        x = x * valid_mask(lens, x.shape[-1])[:, None, :].to(x.dtype)
        x = F.gelu(self.conv2(x))
        lens = conv_out_len(lens, 2)
        return x.transpose(1, 2), lens


class LayerNorm32(nn.LayerNorm):
    """LayerNorm evaluated in float32 whatever the activations' dtype (SPEC1 §4: 'evaluated in float32')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class Rotary(nn.Module):
    """Rotate-half RoPE over head dim 64, theta 10000, positions 0..T−1 (SPEC2 §8.5).

    Only the 32 inverse frequencies are stored (a derived, non-persistent buffer); the angles are built per call so
    any length works and the module traces to ONNX without a fixed table size.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.derive_buffers()

    def derive_buffers(self) -> None:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        self.register_buffer("inv_freq", 1.0 / (self.theta ** exponents), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k [B, T, H, d] -> rotated q, k (angles in float32, as the reference's complex table)."""
        t = torch.arange(q.shape[1], device=q.device, dtype=torch.float32)
        angles = t[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[None, :, None, :]
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """[length, channels] fixed table of v1 (SPEC1 §4.3): row t = [sin(t·inv), cos(t·inv)], inv_i = e^(−i·ln(ts)/(C/2−1))."""
    inv = torch.exp(-math.log(max_timescale) / (channels // 2 - 1) * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat((scaled.sin(), scaled.cos()), dim=1)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention, key without bias, q and k each scaled by d^(−1/4), softmax in float32.

    v2 adds rotary positions on q/k and an FSMN memory: a depthwise k31 conv over the (masked) value projection,
    plus that value, masked again, added after the out projection (SPEC2 §8.5). v1 has neither (SPEC1 §4.4).
    """

    def __init__(self, cfg: S3Config, *, fsmn: bool, rotary: bool) -> None:
        super().__init__()
        width = cfg.n_audio_state
        self.n_head = cfg.n_audio_head
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.fsmn_block = (nn.Conv1d(width, width, cfg.fsmn_kernel, padding=(cfg.fsmn_kernel - 1) // 2,
                                     groups=width, bias=False) if fsmn else None)
        if rotary and cfg.head_dim != cfg.rope_head_dim:
            raise ValueError(f"S3 v2 needs head dim {cfg.rope_head_dim} (rotary table), got {cfg.head_dim}")
        self.rotary = Rotary(cfg.rope_head_dim, cfg.rope_theta) if rotary else None

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, W]; key_bias [B, 1, 1, T] (0 or −1e10); frame_mask [B, T, 1] (1 valid, 0 padding)."""
        b, t, width = x.shape
        q = self.query(x).view(b, t, self.n_head, -1)
        k = self.key(x).view(b, t, self.n_head, -1)
        v_flat = self.value(x)
        v = v_flat.view(b, t, self.n_head, -1)
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        scale = q.shape[-1] ** -0.25
        q = q.permute(0, 2, 1, 3) * scale
        k = k.permute(0, 2, 3, 1) * scale
        logits = (q @ k + key_bias).float()
        weights = torch.softmax(logits, dim=-1).to(x.dtype)
        attended = (weights @ v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3).reshape(b, t, width)
        out = self.out(attended)
        if self.fsmn_block is not None:
            out = out + self._memory(v_flat, frame_mask)
        return out

    def _memory(self, v: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        v = v * frame_mask
        memory = self.fsmn_block(v.transpose(1, 2)).transpose(1, 2)
        return (memory + v) * frame_mask


class ResidualBlock(nn.Module):
    """Pre-norm block: x += Attn(attn_ln(x)); x += mlp(mlp_ln(x)); mlp = Linear(W→4W), exact GELU, Linear(4W→W)."""

    def __init__(self, cfg: S3Config, *, fsmn: bool, rotary: bool) -> None:
        super().__init__()
        width = cfg.n_audio_state
        self.attn = SelfAttention(cfg, fsmn=fsmn, rotary=rotary)
        self.attn_ln = LayerNorm32(width, eps=cfg.ln_eps)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mlp_ln = LayerNorm32(width, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_bias, frame_mask)
        return x + self.mlp(self.mlp_ln(x))


def attention_masks(lens: torch.Tensor, frames: int | torch.Tensor,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(key_bias [B, 1, 1, T] with −1e10 on padded keys, frame_mask [B, T, 1] of 1/0) for post-conv lengths."""
    valid = valid_mask(lens, frames)
    key_bias = torch.where(valid, 0.0, MASKED_LOGIT).to(dtype)[:, None, None, :]
    return key_bias, valid[:, :, None].to(dtype)


# --------------------------------------------------------------------------------------------------------------------
# The interface every backend (the torch ports in v1.py/v2.py, the official ONNX file in onnx_runner.py) offers.

WINDOW_FRAMES = 3000  # 30 s of 100 frames/s mel: the longest input one encoder call sees (SPEC2 §8.8)
OVERLAP_FRAMES = 400  # 4 s shared by consecutive windows
V1_PIECE_SAMPLES = 480_000  # SPEC1 §4 chunking: 30 s pieces of the waveform, tokenised independently
V1_MIN_PIECE_SAMPLES = 480  # a trailing piece shorter than this is dropped


def window_starts(frames: int) -> list[int]:
    """Start frames of the 30 s windows (stride 26 s) covering a clip longer than 30 s: 0, 2600, ... < frames."""
    return list(range(0, frames, WINDOW_FRAMES - OVERLAP_FRAMES))


def merge_windows(pieces: list[list[int]], drop: int) -> list[int]:
    """Concatenate window tokens, dropping `drop` tokens (2 s) on each inner side (SPEC2 §8.8).

    Like the reference, a last window shorter than `drop` tokens contributes nothing.
    """
    merged: list[int] = []
    for i, tokens in enumerate(pieces):
        left = 0 if i == 0 else drop
        right = len(tokens) if i == len(pieces) - 1 else len(tokens) - drop
        merged.extend(tokens[left:max(left, right)])
    return merged


def pad_mels(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_mels, T_i] each -> ([B, n_mels, max T] zero-padded, lens [B] int64)."""
    lens = torch.tensor([m.shape[-1] for m in mels], dtype=torch.int64)
    batch = torch.zeros(len(mels), mels[0].shape[0], int(lens.max()), dtype=mels[0].dtype)
    for i, m in enumerate(mels):
        batch[i, :, :m.shape[-1]] = m
    return batch, lens


def as_wave(wave) -> torch.Tensor:
    """A mono 16 kHz waveform (numpy array or tensor) as a 1-D float32 CPU tensor."""
    t = torch.as_tensor(wave).detach().to("cpu", torch.float32)
    if t.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape [samples], got {tuple(t.shape)}")
    return t


class S3Tokenizer:
    """16 kHz speech -> 25 Hz S3 codes. Subclasses supply `encode_codes` for one batch of ≤30 s mels.

    - `tokenize_mel(mel [B, n_mels, T], lens [B])` -> (codes [B, T'] int64, code lens [B] int64). A clip longer than
      30 s (3000 frames) goes through 30 s windows with 4 s overlap, 2 s of tokens dropped on each inner side.
    - `tokenize(waves)` -> one list of codes per clip, from the log-mel of voxcore.whisper_mel with pad 0.
      v2 takes the mel of the whole clip (SPEC2 §3, §8). v1 first cuts the waveform into 30 s pieces, drops a piece
      under 480 samples, tokenises each piece on its own mel and concatenates (SPEC1 §4, as Step-Audio does); its
      input is the §2-preprocessed waveform (energy norm and trim belong to the caller).
    """

    version: str = "v2"
    n_mels: int = 128
    conv1_stride: int = 2

    def encode_codes(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def drop_tokens(self) -> int:
        """Tokens in 2 s: half the overlap, at 100 / (2 · conv1 stride) tokens per second."""
        return (OVERLAP_FRAMES // 2) // (2 * self.conv1_stride)

    def tokenize_mel(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lens = torch.as_tensor(lens).to("cpu", torch.int64)
        if int(lens.max()) <= WINDOW_FRAMES:
            codes, code_lens = self.encode_codes(mel, lens)
            return codes.to("cpu", torch.int64), code_lens.to("cpu", torch.int64)
        segments, owners = [], []  # every ≤30 s piece of every clip, batched in one call
        for i, n in enumerate(lens.tolist()):
            starts = window_starts(n) if n > WINDOW_FRAMES else [0]
            for s in starts:
                segments.append(mel[i, :, s:min(s + WINDOW_FRAMES, n)])
                owners.append(i)
        seg_codes, seg_lens = self.encode_codes(*pad_mels(segments))
        per_clip: list[list[list[int]]] = [[] for _ in range(len(lens))]
        for row, owner in enumerate(owners):
            per_clip[owner].append(seg_codes[row, :int(seg_lens[row])].tolist())
        merged = [merge_windows(p, self.drop_tokens) for p in per_clip]
        out = torch.zeros(len(merged), max(len(m) for m in merged), dtype=torch.int64)
        for i, m in enumerate(merged):
            out[i, :len(m)] = torch.tensor(m, dtype=torch.int64)
        return out, torch.tensor([len(m) for m in merged], dtype=torch.int64)

    def tokenize(self, waves_16k: list) -> list[list[int]]:
        waves = [as_wave(w) for w in waves_16k]
        pieces, owners = [], []
        for i, w in enumerate(waves):
            for piece in (self._v1_pieces(w) if self.version == "v1" else [w]):
                if piece.numel() // 160 > 0:  # under one hop there is no mel frame, hence no token
                    pieces.append(piece)
                    owners.append(i)
        result: list[list[int]] = [[] for _ in waves]
        if not pieces:
            return result
        codes, code_lens = self.tokenize_mel(*pad_mels([log_mel(p, n_mels=self.n_mels, pad=0) for p in pieces]))
        for row, owner in enumerate(owners):
            result[owner].extend(codes[row, :int(code_lens[row])].tolist())
        return result

    @staticmethod
    def _v1_pieces(wave: torch.Tensor) -> list[torch.Tensor]:
        pieces = torch.split(wave, V1_PIECE_SAMPLES)
        return [p for p in pieces if p.numel() >= V1_MIN_PIECE_SAMPLES]
