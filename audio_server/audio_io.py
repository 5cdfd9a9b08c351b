"""Audio decoding, encoding and resampling at the edge of the service.

Decoding: soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3) first, PyAV (FFmpeg) for the rest
(m4a, webm, mp4, …). Resampling: soxr (high quality, streaming-capable). Encoding for `/v1/audio/speech`:
wav and pcm are written directly so they can stream sentence by sentence; mp3, opus and aac go through PyAV
into a write-only sink that is drained after every sentence. FLAC is the exception: its header (STREAMINFO)
carries the total sample count, and a FLAC streamed without one (0 = unknown) is valid but unreadable by
libsndfile (`soundfile.read` sizes its array from that count). So FLAC is encoded into a seekable buffer,
which FFmpeg's muxer rewinds to fill in the count and MD5, and sent once the whole input is synthesised:
stream wav, pcm, mp3, opus or aac where the first byte's latency matters.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soxr

from realtime.audio import StreamResampler  # one chunked resampler (decoding here, and re-exported for the edge)


class AudioDecodeError(ValueError):
    """The bytes are not audio we can read."""


MIN_RATE, MAX_RATE, MAX_CHANNELS = 1000, 384_000, 16
# The decoded-size limit is the duration limit at a generous reference shape: `max_seconds` of 48 kHz stereo.
# Duration alone bounds nothing: 1790 s of 8-channel 48 kHz FLAC silence is 711 KB on the wire and 2.75 GB
# as float32 (tests/security/test_media_security.py). Samples × channels is what decoding costs.
REFERENCE_RATE, REFERENCE_CHANNELS = 48_000, 2
BLOCK_FRAMES = 32_768  # decoded per step: at most 16 channels × 32768 × 4 bytes = 2 MiB in flight
_UNKNOWN_FRAMES = 2 ** 62  # libsndfile's SF_COUNT_MAX: a stream that does not say its length


@dataclass(frozen=True)
class DecodeBudget:
    """How much one file may decode: seconds of audio, and samples × channels (4 bytes each as float32).

    Checked from the header before decoding where the header says, and on every decoded block: a header can
    lie or say nothing (FLAC streamed from a pipe has no length), so the running count is the real limit."""

    max_seconds: float | None = None
    max_samples: int | None = None

    @classmethod
    def for_duration(cls, max_seconds: float | None, max_samples: int | None = None) -> "DecodeBudget":
        if max_samples is None and max_seconds is not None:
            max_samples = int(max_seconds * REFERENCE_RATE * REFERENCE_CHANNELS)
        return cls(max_seconds, max_samples)

    @staticmethod
    def check_shape(rate: int, channels: int) -> None:
        if not MIN_RATE <= rate <= MAX_RATE:
            raise AudioDecodeError(f"unsupported sample rate {rate} Hz (supported: {MIN_RATE}–{MAX_RATE} Hz)")
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioDecodeError(f"unsupported channel count {channels} (at most {MAX_CHANNELS})")

    def check(self, rate: int, frames: int, samples: int, decoded: bool) -> None:
        """`frames` (per channel, at `rate`) and `samples` (all channels) decoded so far, or announced."""
        said = "has decoded" if decoded else "says it holds"
        if self.max_seconds is not None and frames > self.max_seconds * rate:
            raise AudioDecodeError(f"the audio is longer than {self.max_seconds:g} s (it {said} {frames / rate:.0f} s)")
        if self.max_samples is not None and samples > self.max_samples:
            channels = samples / max(frames, 1)
            raise AudioDecodeError(
                f"the audio decodes to more than {self.max_samples:,} samples × channels ({self.max_samples / 2**18:.0f}"
                f" MiB as float32: the duration limit at {REFERENCE_RATE // 1000} kHz stereo); it {said} "
                f"{samples:,} ({channels:.0f} channels × {rate} Hz × {frames / rate:.0f} s)")


class _MonoSink:
    """Decoded blocks in, float32 mono at the target rate out: counted against the budget, downmixed, made
    finite and resampled block by block, so memory holds the output and one block, never the decoded file."""

    def __init__(self, budget: DecodeBudget, rate: int, target_rate: int):
        self.budget, self.rate = budget, rate
        self.frames = self.samples = 0
        self._resampler = StreamResampler(rate, target_rate)
        self._chunks: list[np.ndarray] = []

    def decoded(self, samples: int) -> None:
        """Count `samples` (all channels) just decoded; checked before they are converted."""
        self.samples += samples
        self.budget.check(self.rate, self.frames, self.samples, decoded=True)

    def add(self, block: np.ndarray) -> None:
        """`block`: [frames, channels] or [frames] float32 at the sink's rate, any values."""
        self.frames += len(block)
        self.budget.check(self.rate, self.frames, self.samples, decoded=True)
        # Float files may hold NaN, inf or 1e38 samples (the last made soxr's output NaN: tests/fuzz). Bounded
        # input keeps the downmix and the resampler's output bounded.
        block = np.clip(np.nan_to_num(block.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=-1.0),
                        -1.0, 1.0)
        self._keep(self._resampler(block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block))

    def finish(self) -> np.ndarray:
        if not self.frames:
            raise AudioDecodeError("the file has no audio samples")
        self._keep(self._resampler(np.zeros(0, np.float32), last=True))
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = []
        return np.clip(audio, -1.0, 1.0, out=audio)

    def _keep(self, out: np.ndarray) -> None:
        if len(out):
            self._chunks.append(out.astype(np.float32, copy=False))


def decode_audio(data: bytes, target_rate: int = 16000, max_seconds: float | None = None,
                 max_samples: int | None = None) -> np.ndarray:
    """Any supported container/codec → float32 mono at `target_rate`, finite, in [-1, 1].

    Headers are not trusted: a sample rate outside 1–384 kHz or more than 16 channels is refused, and with
    `max_seconds` so is longer audio, and audio of more than `max_samples` samples × channels (default: the
    duration limit at 48 kHz stereo) — from the header before decoding where the format says, and on every
    decoded block in any case. (tests/fuzz found a 32 KB WAV claiming 1 Hz that resampled to 1 GB;
    tests/security a 711 KB FLAC that decoded to 2.75 GB.)"""
    if not data:
        raise AudioDecodeError("the audio file is empty")
    budget = DecodeBudget.for_duration(max_seconds, max_samples)
    audio = _decode_soundfile(data, budget, target_rate)
    if audio is None:
        audio = _decode_av(data, budget, target_rate)
    return audio


def _decode_soundfile(data: bytes, budget: DecodeBudget, target_rate: int) -> np.ndarray | None:
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            budget.check_shape(rate, channels)
            if 0 < frames < _UNKNOWN_FRAMES:
                budget.check(rate, frames, frames * channels, decoded=False)
            sink = _MonoSink(budget, rate, target_rate)
            while len(block := f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)):
                sink.decoded(block.size)
                sink.add(block)
        return sink.finish()
    except AudioDecodeError:
        raise
    except Exception:  # libsndfile says only "Format not recognised"; PyAV gets a try
        return None


def _decode_av(data: bytes, budget: DecodeBudget, target_rate: int) -> np.ndarray:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioDecodeError("the file has no audio stream")
            rate = stream.rate or 16000
            channels = stream.codec_context.channels or 1
            budget.check_shape(rate, channels)
            seconds = _announced_seconds(container, stream)
            if seconds is not None:
                budget.check(rate, int(seconds * rate), int(seconds * rate) * channels, decoded=False)
            sink = _MonoSink(budget, rate, target_rate)
            downmix = av.AudioResampler(format="flt", layout="mono", rate=rate)  # FFmpeg's: frames vary in layout
            for frame in container.decode(stream):
                sink.decoded(frame.samples * frame.layout.nb_channels)  # as decoded, before the downmix
                for out in downmix.resample(frame):
                    sink.add(out.to_ndarray().reshape(-1))
            for out in downmix.resample(None):
                sink.add(out.to_ndarray().reshape(-1))
            return sink.finish()
    except AudioDecodeError:
        raise
    except Exception as exc:
        raise AudioDecodeError(f"could not decode audio: {type(exc).__name__}: {exc}") from exc


def _announced_seconds(container, stream) -> float | None:
    """The length the container states, if it states one (a guess from the bit rate is not used)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # microseconds (av.time_base)
    return None


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


class _SeekableSink(io.BytesIO):
    """An in-memory file the muxer may rewind; `drain()` gives nothing until the container is complete."""

    complete = False  # set once the muxer has closed the container (and rewritten the header)

    def drain(self) -> bytes:
        return self.getvalue() if self.complete else b""


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
        # FLAC: seekable, so the muxer writes the length into STREAMINFO on close (see the module docstring)
        self._sink = _SeekableSink() if self.fmt == "flac" else _Sink()
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
            self._sink.complete = True
        return self._sink.drain()

    def finish(self) -> bytes:
        tail = self._resampler(np.zeros(0, np.int16), last=True)
        if self._container is None:
            if self.fmt == "wav" and not self._started:
                return wav_header(self.out_rate) + tail.astype("<i2").tobytes()
            return tail.astype("<i2").tobytes()
        return self._encode_av(tail, flush=True)
