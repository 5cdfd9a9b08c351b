"""Audio at the session boundary: the Realtime wire formats, G.711 codecs and streaming resampling.

Wire formats (OpenAI Realtime): PCM16 little-endian mono at 24 kHz (`audio/pcm`, beta `pcm16`), G.711 μ-law
(`audio/pcmu`, `g711_ulaw`) and A-law (`audio/pcma`, `g711_alaw`) at 8 kHz. Inside a session, input audio is
float32 mono at 16 kHz (what Silero VAD and Whisper take); Piper's 22.05 kHz output is resampled to the
session's output rate.

The G.711 codecs follow ITU-T G.711 as implemented in the classic Sun reference code (the same bit-exact
algorithm CPython's removed `audioop` used): μ-law quantises the 14 high bits of a sample, A-law the 13 high
bits. Both directions are 64 KiB / 256-entry lookup tables built once with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

INTERNAL_RATE = 16000  # VAD and ASR


# ---- G.711 ---------------------------------------------------------------------------------------------
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], np.int32)
_ULAW_BIAS, _ULAW_CLIP = 0x84, 8159  # 14-bit domain: BIAS >> 2 is added to the magnitude


def _build_ulaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit, arithmetic shift (floor)
    negative = pcm < 0
    mag = np.minimum(np.where(negative, -pcm, pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag, side="left")  # first segment whose end >= magnitude
    code = (seg << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    mask = np.where(negative, 0x7F, 0xFF)
    table = (code ^ mask).astype(np.uint8)
    return np.roll(table, -32768)  # index by the int16's bit pattern read as uint16


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    negative = pcm < 0
    mag = np.where(negative, -pcm - 1, pcm)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left")
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = (seg << 4) | ((mag >> shift) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    mask = np.where(negative, 0x55, 0xD5)
    table = (code ^ mask).astype(np.uint8)
    return np.roll(table, -32768)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENC, _ULAW_DEC = _build_ulaw_encode(), _build_ulaw_decode()
_ALAW_ENC, _ALAW_DEC = _build_alaw_encode(), _build_alaw_decode()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples → G.711 μ-law bytes (one byte per sample)."""
    return _ULAW_ENC[np.asarray(pcm, np.int16).view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes → int16 samples."""
    return _ULAW_DEC[np.frombuffer(data, np.uint8)]


def alaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples → G.711 A-law bytes."""
    return _ALAW_ENC[np.asarray(pcm, np.int16).view(np.uint16)].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """G.711 A-law bytes → int16 samples."""
    return _ALAW_DEC[np.frombuffer(data, np.uint8)]


# ---- wire formats ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioFormat:
    """A Realtime audio format. `codec` is "pcm16" | "pcmu" | "pcma"."""

    codec: str
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.codec == "pcm16" else 1

    @property
    def beta_name(self) -> str:
        return {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}[self.codec]

    def ga_object(self) -> dict:
        if self.codec == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": f"audio/{self.codec}"}

    def duration_ms(self, n_bytes: int) -> float:
        return n_bytes / self.bytes_per_sample / self.rate * 1000.0


PCM16 = AudioFormat("pcm16", 24000)
PCMU = AudioFormat("pcmu", 8000)
PCMA = AudioFormat("pcma", 8000)
_BY_BETA = {"pcm16": PCM16, "g711_ulaw": PCMU, "g711_alaw": PCMA}
_BY_GA = {"audio/pcm": PCM16, "audio/pcmu": PCMU, "audio/pcma": PCMA}


def parse_format(value: object) -> AudioFormat:
    """A format as either dialect writes it: "pcm16" / "g711_ulaw" / "g711_alaw" or
    `{"type": "audio/pcm", "rate": 24000}` / `{"type": "audio/pcmu"}` / `{"type": "audio/pcma"}`."""
    if isinstance(value, str):
        fmt = _BY_BETA.get(value) or _BY_GA.get(value)
        if fmt is None:
            raise ValueError(f"unsupported audio format {value!r}; use pcm16, g711_ulaw or g711_alaw "
                             "(GA: audio/pcm, audio/pcmu, audio/pcma)")
        return fmt
    if isinstance(value, dict):
        kind = value.get("type")
        fmt = _BY_GA.get(kind) if isinstance(kind, str) else None  # a list here once raised TypeError (fuzz)
        if fmt is None:
            raise ValueError(f"unsupported audio format type {value.get('type')!r}; use audio/pcm, audio/pcmu "
                             "or audio/pcma")
        rate = value.get("rate", fmt.rate)
        if rate != fmt.rate:
            raise ValueError(f"{fmt.ga_object()['type']} is supported at {fmt.rate} Hz only (got rate={rate!r})")
        return fmt
    raise ValueError("an audio format must be a string or an object with a 'type'")


# Containers that clients sometimes send by mistake instead of raw samples.
_CONTAINER_MAGIC = {b"RIFF": "WAV", b"OggS": "Ogg", b"fLaC": "FLAC", b"ID3": "MP3", b"\x1aE\xdf\xa3": "WebM"}


class AudioFormatError(ValueError):
    """Bytes that do not fit the session's audio format."""


class StreamResampler:
    """Chunk-by-chunk resampling that keeps the filter state between chunks (soxr)."""

    def __init__(self, rate_in: int, rate_out: int, dtype: str = "float32"):
        self.rate_in, self.rate_out = rate_in, rate_out
        self._rs = soxr.ResampleStream(rate_in, rate_out, 1, dtype=dtype, quality="HQ") if rate_in != rate_out else None

    def __call__(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        if self._rs is None:
            return audio
        return self._rs.resample_chunk(audio, last=last)


def decode_bytes(fmt: AudioFormat, data: bytes) -> np.ndarray:
    """Wire bytes → float32 samples at `fmt.rate`. Raises AudioFormatError for bytes that cannot be this format."""
    for magic, name in _CONTAINER_MAGIC.items():
        if data.startswith(magic) and len(data) >= 12:
            raise AudioFormatError(f"the audio looks like a {name} file; send raw {fmt.beta_name} samples "
                                   f"({fmt.rate} Hz mono) without a container")
    if fmt.codec == "pcm16":
        if len(data) % 2:
            raise AudioFormatError("pcm16 audio must have an even number of bytes (16-bit little-endian samples)")
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    pcm = ulaw_decode(data) if fmt.codec == "pcmu" else alaw_decode(data)
    return pcm.astype(np.float32) / 32768.0


class InputDecoder:
    """Session input: wire bytes in the session format → float32 mono at 16 kHz, streaming."""

    def __init__(self, fmt: AudioFormat):
        self.format = fmt
        self._resampler = StreamResampler(fmt.rate, INTERNAL_RATE)

    def __call__(self, data: bytes) -> np.ndarray:
        return self._resampler(decode_bytes(self.format, data))


class OutputEncoder:
    """Response audio: int16 PCM at the TTS rate → wire bytes in the session's output format, streaming."""

    def __init__(self, fmt: AudioFormat, source_rate: int):
        self.format = fmt
        self._resampler = StreamResampler(source_rate, fmt.rate, dtype="int16")

    def __call__(self, pcm: np.ndarray, last: bool = False) -> bytes:
        out = self._resampler(np.asarray(pcm, np.int16), last=last)
        if self.format.codec == "pcm16":
            return np.asarray(out, "<i2").tobytes()
        return ulaw_encode(out) if self.format.codec == "pcmu" else alaw_encode(out)
