"""Audio decoding, encoding and resampling at the edge of the service.

Decoding: soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3) first, PyAV (FFmpeg) for the rest
(m4a, webm, mp4, …). Resampling: soxr (high quality, streaming-capable). Encoding for `/v1/audio/speech`:
wav and pcm are written directly so they can stream sentence by sentence; flac, mp3, opus and aac go
through PyAV into a write-only sink that is drained after every sentence.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soxr

from realtime.audio import StreamResampler  # noqa: F401  (one chunked resampler, re-exported for the edge)


class AudioDecodeError(ValueError):
    """The bytes are not audio we can read."""


MIN_RATE, MAX_RATE, MAX_CHANNELS = 1000, 384_000, 16


def decode_audio(data: bytes, target_rate: int = 16000, max_seconds: float | None = None) -> np.ndarray:
    """Any supported container/codec → float32 mono at `target_rate`, finite, in [-1, 1].

    Headers are not trusted: a sample rate outside 1–384 kHz or more than 16 channels is refused, and
    with `max_seconds` so is longer audio — checked from the header before decoding where the format says,
    and while decoding otherwise. (tests/fuzz found a 32 KB WAV claiming 1 Hz that resampled to 1 GB.)"""
    if not data:
        raise AudioDecodeError("the audio file is empty")
    audio, rate = _decode_soundfile(data, max_seconds)
    if audio is None:
        audio, rate = _decode_av(data, max_seconds)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    # Float files may hold NaN, inf or 1e38 samples (the last made soxr's output NaN: tests/fuzz). Bounded
    # input keeps the resampler's output bounded.
    audio = np.clip(np.nan_to_num(audio.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    return np.clip(resample(audio, rate, target_rate), -1.0, 1.0)


def _check_shape(rate: int, channels: int, frames: int | None, max_seconds: float | None) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioDecodeError(f"unsupported sample rate {rate} Hz (supported: {MIN_RATE}–{MAX_RATE} Hz)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioDecodeError(f"unsupported channel count {channels} (at most {MAX_CHANNELS})")
    if max_seconds is not None and frames is not None and frames > max_seconds * rate:
        raise AudioDecodeError(f"the audio is longer than {max_seconds:g} s ({frames / rate:.0f} s)")


def _decode_soundfile(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray | None, int]:
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            _check_shape(rate, channels, frames, max_seconds)
            audio = f.read(dtype="float32", always_2d=False)
        return audio, rate
    except AudioDecodeError:
        raise
    except Exception:  # libsndfile says only "Format not recognised"; PyAV gets a try
        return None, 0


def _decode_av(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioDecodeError("the file has no audio stream")
            rate = stream.rate or 16000
            _check_shape(rate, 1, None, None)
            limit = None if max_seconds is None else int(max_seconds * rate)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks, samples = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    samples += len(chunks[-1])
                if limit is not None and samples > limit:  # headers may not say: count while decoding
                    raise AudioDecodeError(f"the audio is longer than {max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except Exception as exc:
        raise AudioDecodeError(f"could not decode audio: {type(exc).__name__}: {exc}") from exc
    if not chunks:
        raise AudioDecodeError("the file has no audio samples")
    return np.concatenate(chunks), rate


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return audio
    return soxr.resample(audio, rate_in, rate_out, quality="HQ").astype(audio.dtype, copy=False)


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise AudioDecodeError("PCM16 data must have an even number of bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    """The exact inverse of `pcm16_to_float` (same 32768 scale, rounded; tests/fuzz found the old 32767
    scale with truncation turned every positive sample into one less); out-of-range values saturate."""
    audio = np.nan_to_num(np.asarray(audio, np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")


def wav_header(sample_rate: int, channels: int = 1, data_bytes: int | None = None) -> bytes:
    """A PCM16 WAV header. With `data_bytes=None` the sizes are 0xFFFFFFFF: "length unknown, streaming",
    which ffmpeg, browsers and soundfile all accept."""
    size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    byte_rate = sample_rate * channels * 2
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate,
            byte_rate, channels * 2, 16) + b"data" + struct.pack("<I", size))


# ---- streaming encoders for /v1/audio/speech ----------------------------------------------------------
SPEECH_FORMATS = {
    # format: (media type, output sample rate or None for the voice's own)
    "wav": ("audio/wav", None),
    "pcm": ("audio/pcm", 24000),  # OpenAI's pcm is raw 24 kHz s16le
    "flac": ("audio/flac", None),
    "mp3": ("audio/mpeg", None),
    "opus": ("audio/ogg", 48000),
    "aac": ("audio/aac", None),
}


class _Sink(io.RawIOBase):
    """Write-only, non-seekable: FFmpeg muxers then write in streaming mode and we drain after each chunk."""

    def __init__(self):
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b) -> int:
        self.buf += bytes(b)
        return len(b)

    def drain(self) -> bytes:
        out, self.buf = bytes(self.buf), bytearray()
        return out


class SpeechEncoder:
    """int16 PCM chunks in, encoded bytes out, chunk by chunk. `finish()` returns the tail."""

    def __init__(self, fmt: str, sample_rate: int):
        if fmt not in SPEECH_FORMATS:
            raise ValueError(f"unsupported response_format {fmt!r}; use one of {', '.join(SPEECH_FORMATS)}")
        self.fmt = fmt
        self.media_type, out_rate = SPEECH_FORMATS[fmt]
        self.in_rate = sample_rate
        self.out_rate = out_rate or sample_rate
        self._resampler = StreamResampler(sample_rate, self.out_rate, dtype="int16")
        self._started = False
        self._container = None
        if fmt in ("flac", "mp3", "opus", "aac"):
            self._open_av()

    def _open_av(self) -> None:
        import av

        container_fmt, codec = {"flac": ("flac", "flac"), "mp3": ("mp3", "libmp3lame"),
                                "opus": ("ogg", "libopus"), "aac": ("adts", "aac")}[self.fmt]
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=container_fmt)
        self._stream = self._container.add_stream(codec, rate=self.out_rate, layout="mono")
        self._pts = 0

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = self._resampler(np.asarray(pcm, np.int16))
        if self._container is None:
            head = b""
            if self.fmt == "wav" and not self._started:
                head = wav_header(self.out_rate)
            self._started = True
            return head + pcm.astype("<i2").tobytes()
        return self._encode_av(pcm, flush=False)

    def _encode_av(self, pcm: np.ndarray, flush: bool) -> bytes:
        import av

        if len(pcm):
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.int16), format="s16", layout="mono")
            frame.sample_rate = self.out_rate
            frame.pts = self._pts
            self._pts += len(pcm)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        if flush:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        return self._sink.drain()

    def finish(self) -> bytes:
        tail = self._resampler(np.zeros(0, np.int16), last=True)
        if self._container is None:
            if self.fmt == "wav" and not self._started:
                return wav_header(self.out_rate) + tail.astype("<i2").tobytes()
            return tail.astype("<i2").tobytes()
        return self._encode_av(tail, flush=True)
