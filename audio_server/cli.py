"""`voxline` command line: serve, transcribe, speak, pipeline (and the training commands of the model packages)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _serve(args) -> int:
    from audio_server.app import create_app
    from audio_server.lifecycle import serve
    from audio_server.settings import Settings

    try:
        settings = Settings.from_env(host=args.host, port=args.port, preset=args.preset, asr_model=args.asr_model,
                                     pipeline=args.pipeline, checkpoint=args.checkpoint)
    except ValueError as exc:
        print(f"voxline: {exc}", file=sys.stderr)
        return 2
    if settings.preset == "tiny" and settings.pipeline == "cascade":
        print(f"preset {settings.preset!r} is not served by the cascade; use --preset embedded, or "
              "--pipeline unified --preset tiny", file=sys.stderr)
        return 2
    if not settings.api_keys and settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"refusing to listen on {settings.host} without API keys: set VOXLINE_API_KEYS or use 127.0.0.1",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    app = create_app(settings, preload=False)
    if settings.pipeline == "step-audio":
        print(f"voxline: loading the Step-Audio 2 checkpoint {settings.checkpoint} (realtime, transcription and "
              "speech from one model)...", flush=True)
        app.state.hub.vad()
        app.state.hub.step_audio2().default_voice()
        llm_name = f"step-audio-2 ({settings.checkpoint})"
    elif settings.preset == "step-audio-tts":
        print(f"voxline: loading the Step-Audio-TTS-3B download {settings.checkpoint} (speech on /v1/audio/speech; "
              "ASR and chat stay Whisper and the default LLM, loaded on first use)...", flush=True)
        from voxcore.strict_load import CheckpointError

        try:
            stack = app.state.hub.step_audio_tts()
        except CheckpointError as exc:  # a mis-shaped or missing tensor: one line naming it, not a traceback
            print(f"voxline: {exc}", file=sys.stderr)
            return 2
        stack.default_voice()
        from audio_server.step_audio_tts_modes import is_tiny_download

        if is_tiny_download(settings.checkpoint):
            print("voxline: this is the tiny test download (random weights): /v1/audio/speech returns noise-like "
                  "audio (mechanics, not speech quality)", flush=True)
        llm_name = "default, loaded on first chat (speech: step-audio-tts-3b)"
    elif settings.pipeline == "unified":
        print("voxline: realtime sessions run the UNIFIED pipeline with the tiny preset: random weights, so the "
              "answers are noise-like audio (mechanics, not speech quality)", flush=True)
        app.state.hub.vad()
        app.state.hub.unified()
        llm_name = "none (unified audio LLM: tiny, random weights)"
    else:
        print(f"voxline: loading the {settings.preset} models (ASR {settings.asr_model}, TTS piper-joe, Silero VAD)...",
              flush=True)
        app.state.hub.load_all()
        print("voxline: loading the chat LLM (first start converts the GGUF once, ~1 min)...", flush=True)
        llm_name = app.state.hub.llm().model_id
    base = f"http://{settings.host}:{settings.port}"
    ws = f"ws://{settings.host}:{settings.port}"
    print(f"voxline: models loaded in {time.perf_counter() - t0:.1f}s (LLM {llm_name}). Serving on {base}\n"
          f"  health          {base}/healthz\n"
          f"  models          {base}/v1/models\n"
          f"  transcriptions  POST {base}/v1/audio/transcriptions\n"
          f"  speech          POST {base}/v1/audio/speech\n"
          f"  streaming ASR   {ws}/v1/asr/stream?sample_rate=16000\n"
          f"  streaming TTS   {ws}/v1/tts/stream\n"
          f"  chat            POST {base}/v1/chat/completions\n"
          f"  realtime        {ws}/v1/realtime?model=voxline\n"
          f"  twilio webhook  POST {base}/twilio/voice\n"
          f"  metrics         {base}/metrics\n"
          f"Voice chat page: {base}/  (open it in a browser)", flush=True)
    # SIGTERM / Ctrl+C: sessions are drained first (response.done cancelled, close 1001), see lifecycle.py.
    serve(app, settings.host, settings.port, log_level=args.log_level)
    return 0


class CLIError(Exception):
    """A mistake the user can fix: printed as one line ("voxline <command>: ..."), exit code 2."""


def _read_audio(path: str):
    from audio_server.audio_io import AudioDecodeError, decode_audio

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CLIError(f"no such file: {path}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return decode_audio(data, 16000)
    except AudioDecodeError as exc:
        raise CLIError(f"{path} is not audio we can read: {exc}") from None


def _transcribe(args) -> int:
    from asr.whisper_asr import DecodeOptions, WhisperASR

    audio = _read_audio(args.file)
    asr = WhisperASR(args.model)
    t0 = time.perf_counter()
    result = asr.transcribe(audio, DecodeOptions(language=args.language))
    elapsed = time.perf_counter() - t0
    print(result.text)
    print(f"[{args.model}: {result.duration:.1f}s of audio in {elapsed:.2f}s, RTF {elapsed / max(result.duration, 1e-3):.3f}]",
          file=sys.stderr)
    return 0


# Output formats by file extension: libsndfile writes the lossless ones with exact headers, PyAV encodes the
# compressed ones (the same encoders as /v1/audio/speech's response_format).
_SNDFILE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
_ENCODED_FORMATS = {".mp3": "mp3", ".opus": "opus", ".aac": "aac"}


def _write_speech(path: str, pcm, sample_rate: int) -> None:
    import soundfile

    from audio_server.audio_io import SpeechEncoder

    ext = Path(path).suffix.lower()
    if ext in _SNDFILE_FORMATS:
        soundfile.write(path, pcm, sample_rate, subtype="PCM_16", format=_SNDFILE_FORMATS[ext])
        return
    encoder = SpeechEncoder(_ENCODED_FORMATS[ext], sample_rate)
    Path(path).write_bytes(encoder.encode(pcm) + encoder.finish())


def _speak(args) -> int:
    from tts.piper_tts import PiperTTS, SpeechOptions
    from tts.text_normalize import has_speech

    ext = Path(args.output).suffix.lower()
    if ext not in _SNDFILE_FORMATS and ext not in _ENCODED_FORMATS:
        supported = ", ".join((*_SNDFILE_FORMATS, *_ENCODED_FORMATS))
        raise CLIError(f"cannot write {args.output!r}: the output format is chosen by its extension, one of {supported}")
    if not has_speech(args.text):
        raise CLIError("the text has nothing to speak (it is empty, or only spaces, emoji or symbols)")
    try:
        options = SpeechOptions(speed=args.speed)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not Path(args.output).resolve().parent.is_dir():
        raise CLIError(f"cannot write {args.output}: no such directory")
    tts = PiperTTS()
    t0 = time.perf_counter()
    pcm = tts.synthesize_all(args.text, options)
    elapsed = time.perf_counter() - t0
    _write_speech(args.output, pcm, tts.sample_rate)
    seconds = len(pcm) / tts.sample_rate
    print(f"wrote {args.output}: {seconds:.2f}s at {tts.sample_rate} Hz in {elapsed:.2f}s (RTF {elapsed / max(seconds, 1e-3):.3f})",
          file=sys.stderr)
    return 0


def _pipeline(args) -> int:
    import asyncio

    import numpy as np
    import soundfile
    import torch

    from realtime.unified_pipeline import UnifiedOptions, UnifiedStack
    from realtime.unified_turn import WIRE_RATE, LocalModels, run_turn

    if args.preset != "tiny":
        print(f"voxline pipeline: preset {args.preset!r} has no unified audio model; use --preset tiny",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    audio = _read_audio(args.file)
    try:
        options = UnifiedOptions(n_draft=args.mtp, max_audio_tokens=args.max_tokens, seed=args.seed)
        models = LocalModels(UnifiedStack.tiny(options=options))
    except ValueError as exc:
        print(f"voxline pipeline: {exc}", file=sys.stderr)
        return 2
    print(f"voxline pipeline: tiny preset (random weights: mechanics, not speech quality), MTP k={args.mtp}, "
          f"{len(audio) / 16000:.2f}s of input", file=sys.stderr)
    if args.warmup:
        asyncio.run(run_turn(models, audio[:16000], temperature=args.temperature, session_id="sess_warmup"))
    result = asyncio.run(run_turn(models, audio, temperature=args.temperature))
    pcm = np.frombuffer(result.audio, "<i2")
    soundfile.write(args.output, pcm, WIRE_RATE, subtype="PCM_16")
    st = result.stats
    first = f"{1000 * result.first_audio_s:.0f} ms" if result.first_audio_s is not None else "no audio"
    status = result.done["response"]["status"]
    print(f"wrote {args.output}: {result.audio_s:.2f}s at {WIRE_RATE} Hz, response {status}\n"
          f"  prompt tokens          {st.prompt_tokens}\n"
          f"  answer audio tokens    {st.audio_tokens} ({st.finish})\n"
          f"  first audio latency    {first} (commit -> first audio delta)\n"
          f"  RTF                    {st.rtf:.3f} (LLM {st.llm_s:.2f}s + vocoder {st.vocoder_s:.2f}s per "
          f"{st.audio_s:.2f}s of audio); wall {result.done_s / max(result.audio_s, 1e-9):.3f}\n"
          f"  MTP tokens per step    {st.tokens_per_step:.2f} (k={st.n_draft}, {st.steps} verify steps)")
    return 0


def _delegate(module: str):
    def run(args) -> int:
        import importlib

        return importlib.import_module(module).main(args.rest) or 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxline", description="Streaming speech interaction service")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the HTTP/WebSocket service")
    serve.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--preset", default=None, help="embedded (default), tiny, step-audio, step-audio-tts")
    serve.add_argument("--asr-model", default=None, help="whisper-base (default) or whisper-tiny.en")
    serve.add_argument("--checkpoint", default=None,
                       help="the step-audio preset's checkpoint directory (official Step-Audio 2 layout), or the "
                            "step-audio-tts preset's download (Step-Audio-TTS-3B/ + Step-Audio-Tokenizer/)")
    serve.add_argument("--pipeline", default=None, choices=("cascade", "unified"),
                       help="realtime responses: cascade (default; ASR -> LLM -> TTS) or unified (audio LLM; "
                            "--preset tiny)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=_serve)

    tr = sub.add_parser("transcribe", help="transcribe an audio file with the embedded ASR")
    tr.add_argument("file")
    tr.add_argument("--model", default="whisper-base")
    tr.add_argument("--language", default=None)
    tr.set_defaults(run=_transcribe)

    sp = sub.add_parser("speak", help="synthesise text to an audio file with the embedded TTS")
    sp.add_argument("text")
    sp.add_argument("-o", "--output", default="out.wav",
                    help="the file; its extension picks the format: .wav, .flac, .mp3, .opus or .aac")
    sp.add_argument("--speed", type=float, default=1.0)
    sp.set_defaults(run=_speak)

    pl = sub.add_parser("pipeline", help="one spoken turn through a realtime session on the unified pipeline "
                                         "(audio -> tokens -> audio LLM with MTP -> vocoder -> audio)")
    pl.add_argument("file", help="input audio (any format ffmpeg/libsndfile reads)")
    pl.add_argument("-o", "--output", default="answer.wav", help="the answer as a 24 kHz WAV")
    pl.add_argument("--preset", default="tiny", help="tiny (random weights; the only unified preset so far)")
    pl.add_argument("--mtp", type=int, default=3, help="MTP drafts per verify step (0 = plain decoding)")
    pl.add_argument("--max-tokens", type=int, default=150, help="longest answer in audio tokens (multiple of 5)")
    pl.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--threads", type=int, default=1, help="torch threads (1 suits the tiny models)")
    pl.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed 1 s warm-up turn")
    pl.set_defaults(run=_pipeline)

    for name, module, text in (("train-codebook", "tokenizer.train_codebook", "train the linguistic k-means codebook"),
                               ("train-mtp", "runtime.train_mtp", "train MTP heads of a runtime model by self-distillation"),
                               ("train-llm-mtp", "runtime.llm.mtp", "train an MTP head for the embedded chat LLM")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(run=_delegate(module))
    return parser


_DELEGATED = {"train-codebook": "tokenizer.train_codebook", "train-mtp": "runtime.train_mtp",
              "train-llm-mtp": "runtime.llm.mtp"}


def _whisper_model(rest: list[str]) -> bool:
    """``train-mtp --model whisper-*`` trains the Whisper decoder's heads, not a runtime model's."""
    for i, arg in enumerate(rest):
        value = rest[i + 1] if arg == "--model" and i + 1 < len(rest) else arg.partition("--model=")[2]
        if value.startswith("whisper"):
            return True
    return False


def _configure_logging(command: str | None) -> None:
    """The server logs at INFO (it is a service; uvicorn's own level is --log-level). The one-shot commands print
    their result and warnings only: faster-whisper's INFO lines ("Processing audio with duration ...") are noise
    around a transcript."""
    level = logging.INFO if command in ("serve", *_DELEGATED) else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.INFO:
        logging.getLogger("faster_whisper").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _configure_logging(argv[0] if argv else None)
    if argv and argv[0] in _DELEGATED:  # their own parsers own every flag, --help included
        import importlib

        module = _DELEGATED[argv[0]]
        if argv[0] == "train-mtp" and _whisper_model(argv[1:]):
            module = "asr.torch_whisper.train"  # MTP heads for the torch Whisper decoder
        return importlib.import_module(module).main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CLIError as exc:
        print(f"voxline {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
