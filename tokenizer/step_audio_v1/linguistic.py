"""Step-Audio v1 linguistic stream "vq02": 16 kHz audio -> 16.7 Hz codes in 0..1023 (SPEC §1, §2, §3).

The reference tokenizer cuts the (preprocessed, §2) waveform into slices of 3840 samples (= 4 LFR rows of 6 x 10 ms)
and runs each through the chunked Paraformer front end and the streaming SAN-M encoder chunk step (chunk_size
[0, 4, 5], look-back 4; the last slice is the ``is_final`` call, an empty one is skipped). Of each call it keeps the
last k window rows (k = the new LFR rows) and gives every kept 512-d row the index of its nearest k-means centroid
(``torch.cdist`` in float32). One code per LFR row, so an utterance of T fbank frames has ceil(T / 6) codes.

Two routes to the same codes:
- `LinguisticTokenizer.tokenize(wave)` (offline): the front end runs once on the whole waveform (SPEC §3.2 shows it
  equals the chunked one), then the encoder runs call by call on the row counts the slicing would give;
- `LinguisticTokenizer.stream()` -> `LinguisticStream`: fed audio in any pieces, it runs a call as soon as a whole
  slice is buffered and emits that slice's codes; `finish()` makes the final call on what is left.

The encoder output is chunked by design and differs from a full-context pass; both routes run the same chunk step,
so chunked == offline here holds exactly for the codes and to float rounding for the features.

Official files (`load_linguistic_tokenizer`): the FunASR model's torch weights (``model.pt``; only ``encoder.*`` is
used, decoder/predictor/CTC tensors are dropped), its Kaldi-nnet ``am.mvn`` (``<AddShift>``, ``<Rescale>``) and
``linguistic_tokenizer.npy`` (the 1024 x 512 centroids). Each goes through `voxcore.strict_load`.

Preprocessing (`preprocess_16k`, SPEC §2): energy norm and, for prompts, the librosa-style trim with margins.
Resampling is not done here: inputs must already be 16 kHz (the reference refuses to upsample).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tokenizer.step_audio_v1.frontend import FrontendConfig, FrontendStream, LinguisticFrontend
from tokenizer.step_audio_v1.paraformer import ChunkConfig, EncoderStreamState, SANMEncoderChunkOpt, SANMEncoderConfig
from voxcore.strict_load import CheckpointError, Source, empty_parameters, load_strict

SAMPLE_RATE = 16000
CODEBOOK_SIZE = 1024
_PARAFORMER_HEADS = ("decoder.", "predictor.", "ctc.", "criterion_att.", "stride_conv.")


@dataclass(frozen=True)
class LinguisticConfig:
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: SANMEncoderConfig = field(default_factory=SANMEncoderConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    codebook_size: int = CODEBOOK_SIZE

    @classmethod
    def from_funasr(cls, conf: Mapping | str | Path, codebook_size: int = CODEBOOK_SIZE) -> LinguisticConfig:
        """From the FunASR model's ``config.yaml`` (a path, .json also read, or the parsed mapping).

        Reads ``frontend_conf``, ``encoder_conf`` and ``input_size``; the chunk configuration is the one the
        reference passes at inference (SPEC §3.1), not the training-time ``chunk_size`` lists of ``encoder_conf``."""
        if not isinstance(conf, Mapping):
            text = Path(conf).read_text()
            if str(conf).endswith(".json"):
                conf = json.loads(text)
            else:
                import yaml  # only a FunASR yaml needs it

                conf = yaml.safe_load(text)
        frontend = FrontendConfig.from_funasr(conf.get("frontend_conf", {}))
        input_size = int(conf.get("input_size") or frontend.feature_dim)
        if input_size != frontend.feature_dim:
            raise ValueError(f"input_size {input_size} != lfr_m * n_mels = {frontend.feature_dim}")
        return cls(frontend=frontend, encoder=SANMEncoderConfig.from_funasr(conf.get("encoder_conf", {}), input_size),
                   codebook_size=codebook_size)

    @property
    def slice_samples(self) -> int:
        """Samples per reference call: chunk_frames LFR rows of lfr_n fbank hops (3840 = 240 ms)."""
        return self.chunk.chunk_frames * self.frontend.lfr_n * self.frontend.frame_shift


class KMeansQuantizer(nn.Module):
    """Nearest centroid by Euclidean distance (``torch.cdist``, float32), SPEC §3.4."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.zeros(codebook_size, dim))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N] int64 codes."""
        if rows.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=rows.device)
        distances = torch.cdist(rows.to(torch.float32).unsqueeze(0), self.centroids.to(torch.float32).unsqueeze(0))
        return distances[0].argmin(dim=-1)


@dataclass
class EncoderCall:
    """One reference call: its k new feature rows, the whole encoder window, and the codes of its last k rows."""

    features: torch.Tensor  # [k, 560]
    window: torch.Tensor  # [overlap + k, D]
    codes: torch.Tensor  # [k]

    @property
    def kept(self) -> torch.Tensor:
        return self.window[self.window.shape[0] - self.features.shape[0]:]


class LinguisticTokenizer(nn.Module):
    def __init__(self, config: LinguisticConfig | None = None) -> None:
        super().__init__()
        self.config = config or LinguisticConfig()
        c = self.config
        self.frontend = LinguisticFrontend(c.frontend)
        self.encoder = SANMEncoderChunkOpt(c.encoder, c.chunk)
        self.quantizer = KMeansQuantizer(c.codebook_size, c.encoder.output_size)

    def rows_per_call(self, num_samples: int) -> list[int]:
        """New LFR rows of each reference call for an utterance of ``num_samples`` (SPEC §3.1, §3.2)."""
        fc, step = self.config.frontend, self.config.slice_samples
        done, counts = 0, []
        for start in range(0, num_samples // step * step + 1, step):
            end = min(start + step, num_samples)
            if end == start:  # the empty final slice of a whole number of slices is skipped
                break
            frames = self.frontend.num_frames(end)
            if end == num_samples and end - start < step:  # the is_final call pads the LFR tail
                total = -(-frames // fc.lfr_n)
            else:
                spliced = frames + fc.lfr_left if frames else 0
                total = (spliced - fc.lfr_m) // fc.lfr_n + 1 if spliced >= fc.lfr_m else 0
            counts.append(total - done)
            done = total
        return counts

    @torch.no_grad()
    def encode_calls(self, features: torch.Tensor, rows_per_call: list[int]) -> list[EncoderCall]:
        """Run the encoder chunk step on consecutive groups of CMVN'd LFR rows; a fresh state per utterance."""
        if sum(rows_per_call) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows but the calls take {sum(rows_per_call)}")
        state, calls, start = self.encoder.new_state(), [], 0
        for k in rows_per_call:
            if k:
                calls.append(self._call(features[start:start + k], state))
            start += k
        return calls

    def _call(self, features: torch.Tensor, state: EncoderStreamState) -> EncoderCall:
        window = self.encoder.forward_chunk(features.unsqueeze(0), state)[0].to(torch.float32)
        kept = window[window.shape[0] - features.shape[0]:]
        return EncoderCall(features, window, self.quantizer(kept))

    @torch.no_grad()
    def encode(self, wave_16k: torch.Tensor | np.ndarray) -> list[EncoderCall]:
        """Offline route: front end over the whole waveform, then the reference's calls."""
        wave = _as_wave(wave_16k)
        return self.encode_calls(self.frontend(wave), self.rows_per_call(wave.numel()))

    def tokenize(self, wave_16k: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[L] 16 kHz waveform (already preprocessed, SPEC §2) -> [ceil(T / 6)] int64 codes."""
        calls = self.encode(wave_16k)
        if not calls:
            return torch.zeros(0, dtype=torch.long, device=self.quantizer.centroids.device)
        return torch.cat([c.codes for c in calls])

    def stream(self, keep_calls: bool = False) -> LinguisticStream:
        return LinguisticStream(self, keep_calls)


class LinguisticStream:
    """One utterance, fed in pieces: ``feed(samples)`` -> codes of every slice completed; ``finish()`` -> the rest.

    With ``keep_calls`` each call's `EncoderCall` is kept in ``calls`` (for inspection and tests)."""

    def __init__(self, tokenizer: LinguisticTokenizer, keep_calls: bool = False) -> None:
        self.tokenizer = tokenizer
        self.step = tokenizer.config.slice_samples
        self.frontend: FrontendStream = tokenizer.frontend.stream()
        self.state = tokenizer.encoder.new_state()
        self.buffer = torch.zeros(0, device=tokenizer.quantizer.centroids.device)
        self.keep_calls = keep_calls
        self.calls: list[EncoderCall] = []
        self.finished = False

    @torch.no_grad()
    def feed(self, samples: torch.Tensor | np.ndarray) -> torch.Tensor:
        if self.finished:
            raise RuntimeError("this linguistic stream is finished; start a new one per utterance")
        self.buffer = torch.cat([self.buffer, _as_wave(samples).to(self.buffer)])
        codes = []
        while self.buffer.numel() >= self.step:
            codes.append(self._run(self.buffer[: self.step], is_final=False))
            self.buffer = self.buffer[self.step:]
        return self._join(codes)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """The ``is_final`` call on the buffered remainder (none when the audio was a whole number of slices)."""
        if self.finished:
            raise RuntimeError("this linguistic stream is already finished")
        self.finished = True
        if self.buffer.numel() == 0:
            return self._join([])
        codes = self._run(self.buffer, is_final=True)
        self.buffer = self.buffer[:0]
        return codes

    def _run(self, samples: torch.Tensor, is_final: bool) -> torch.Tensor:
        features = self.frontend.accept(samples, is_final=is_final)
        if features.shape[0] == 0:
            return self._join([])
        call = self.tokenizer._call(features, self.state)
        if self.keep_calls:
            self.calls.append(call)
        return call.codes

    def _join(self, codes: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long, device=self.buffer.device)


def _as_wave(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    wave = torch.as_tensor(wave)
    if wave.dim() == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.dim() != 1:
        raise ValueError(f"expected a mono waveform [L] (or [1, L]), got shape {tuple(wave.shape)}")
    return wave.to(torch.float32)


# --- preprocessing (SPEC §2) -------------------------------------------------------------------------------------

TRIM_TOP_DB, TRIM_FRAME, TRIM_HOP = 20.0, 512, 128
TRIM_BLOCK, TRIM_LEAD, TRIM_MARGIN = 240, 800, 4320


def energy_norm(wave: torch.Tensor) -> torch.Tensor:
    """x / max(max|x|, 0.01) * 0.999."""
    peak = wave.abs().max() if wave.numel() else wave.new_tensor(0.0)
    return wave / torch.clamp(peak, min=0.01) * 0.999


def trim_bounds(wave: torch.Tensor, top_db: float = TRIM_TOP_DB, frame_length: int = TRIM_FRAME,
                hop_length: int = TRIM_HOP) -> tuple[int, int]:
    """[start, end) of the non-silent part, as ``librosa.effects.trim`` finds it.

    Frame power = mean square over centred (zero-padded) frames; a frame is non-silent when its power is within
    ``top_db`` of the loudest frame's (both floored at 1e-10); the span runs from the first such frame's start to
    the end of the last one, in hops."""
    x = wave.to(torch.float64).reshape(-1)
    padded = torch.nn.functional.pad(x, (frame_length // 2, frame_length // 2))
    power = padded.unfold(0, frame_length, hop_length).pow(2).mean(dim=1)
    db = 10.0 * torch.log10(torch.clamp(power, min=1e-10))
    ref = 10.0 * math.log10(max(float(power.max()), 1e-10))
    loud = torch.nonzero(db - ref > -top_db).flatten()
    if loud.numel() == 0:
        return 0, 0
    return int(loud[0]) * hop_length, min(x.numel(), (int(loud[-1]) + 1) * hop_length)


def preprocess_16k(wave_16k: torch.Tensor | np.ndarray, enable_trim: bool = True) -> torch.Tensor:
    """SPEC §2 on a 16 kHz mono waveform: energy norm, then (``enable_trim``) trim to the speech with margins.

    Trim keeps n = ceil((end - start) / 240) blocks: the signal starts 800 samples before ``start`` (zeros in
    front when that is before 0) and is cut or zero-padded to n * 240 + 4320 samples."""
    wave = energy_norm(_as_wave(wave_16k))
    if not enable_trim:
        return wave
    start, end = trim_bounds(wave)
    blocks = -(-(end - start) // TRIM_BLOCK)
    begin = start - TRIM_LEAD
    wave = torch.cat([wave.new_zeros(-begin), wave]) if begin < 0 else wave[begin:]
    length = blocks * TRIM_BLOCK + TRIM_MARGIN
    return torch.cat([wave, wave.new_zeros(max(0, length - wave.numel()))])[:length]


# --- loading the official files ----------------------------------------------------------------------------------

def read_am_mvn(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``<AddShift>`` and ``<Rescale>`` vectors of a Kaldi-nnet ``am.mvn`` text file."""
    text = Path(path).read_text()
    vectors = {}
    for tag in ("<AddShift>", "<Rescale>"):
        at = text.find(tag)
        open_at = text.find("[", at) if at >= 0 else -1
        close_at = text.find("]", open_at) if open_at >= 0 else -1
        if close_at < 0:
            raise CheckpointError(f"{path}: no {tag} [ ... ] vector")
        vectors[tag] = torch.tensor([float(v) for v in text[open_at + 1:close_at].split()], dtype=torch.float32)
    return vectors["<AddShift>"], vectors["<Rescale>"]


def _cmvn_tensors(cmvn: str | Path | tuple | Mapping) -> dict[str, torch.Tensor]:
    if isinstance(cmvn, Mapping):
        return dict(cmvn)
    if isinstance(cmvn, (str, Path)):
        shift, rescale = read_am_mvn(cmvn)
    else:
        shift, rescale = cmvn
    return {"cmvn_shift": torch.as_tensor(shift), "cmvn_rescale": torch.as_tensor(rescale)}


def _centroid_tensors(kmeans: str | Path | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(kmeans, (str, Path)):
        if not Path(kmeans).is_file():
            raise CheckpointError(f"k-means centroids not found: {kmeans}")
        kmeans = np.load(str(kmeans), allow_pickle=False)
    return {"centroids": torch.as_tensor(np.asarray(kmeans) if isinstance(kmeans, np.ndarray) else kmeans)}


def encoder_name(file_key: str) -> str | None:
    """Official Paraformer name -> ours: ``encoder.`` is stripped; the decoder, predictor and CTC are not used."""
    if file_key.startswith("encoder."):
        return file_key[len("encoder."):]
    if file_key.startswith(_PARAFORMER_HEADS):
        return None
    return file_key


def load_linguistic_tokenizer(encoder_weights: Source, cmvn: str | Path | tuple | Mapping,
                              kmeans: str | Path | np.ndarray | torch.Tensor,
                              config: LinguisticConfig | Mapping | str | Path | None = None, *,
                              dtype: torch.dtype = torch.float32,
                              device: str | torch.device = "cpu") -> LinguisticTokenizer:
    """Build the vq02 tokenizer from the official files.

    - ``encoder_weights``: the FunASR Paraformer ``model.pt`` (or .safetensors, or a name -> tensor dict);
    - ``cmvn``: the ``am.mvn`` path, or (shift, rescale);
    - ``kmeans``: ``linguistic_tokenizer.npy`` path, or the [1024, D] array;
    - ``config``: a `LinguisticConfig`, or the FunASR ``config.yaml`` (path or mapping); default: real sizes.

    ``dtype`` applies to the encoder; the front end and the distances stay float32 (SPEC §11). Any missing,
    unexpected or mis-shaped tensor raises one `CheckpointError`."""
    if config is None:
        config = LinguisticConfig()
    elif not isinstance(config, LinguisticConfig):
        config = LinguisticConfig.from_funasr(config)
    with empty_parameters():
        model = LinguisticTokenizer(config)
    where = str(encoder_weights) if isinstance(encoder_weights, (str, Path)) else "linguistic encoder weights"
    load_strict(model.encoder, encoder_weights, dtype=dtype, device=device, where=where, rename=encoder_name)
    load_strict(model.frontend, _cmvn_tensors(cmvn), dtype=torch.float32, device=device,
                where=str(cmvn) if isinstance(cmvn, (str, Path)) else "CMVN")
    load_strict(model.quantizer, _centroid_tensors(kmeans), dtype=torch.float32, device=device,
                where=str(kmeans) if isinstance(kmeans, (str, Path)) else "k-means centroids")
    return model.eval()
