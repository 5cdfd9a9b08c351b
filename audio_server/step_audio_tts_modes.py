"""The HTTP speech mode of the step-audio-tts preset over the one loaded Step-Audio-TTS-3B download.

`/v1/audio/speech` calls a synthesiser; :class:`audio_server.step_audio2_modes.OneVoiceSpeaker` presents the stack
(`realtime.step_audio_tts_stack`) in the shape that route already uses (Piper's), so the route stays as it is and
resamples/encodes the 22.05 kHz PCM for the requested format. It runs blocking on the model pool; the decoding itself
is a slot of the stack's one stepping loop.
"""

from __future__ import annotations

from pathlib import Path

MODEL_NAME = "step-audio-tts-3b"
TINY_MARKER = "VOXLINE_TINY.json"  # written by runtime.step1.tiny_checkpoint: random weights


def is_tiny_download(directory: str | Path) -> bool:
    """Whether ``directory`` is the tiny random test download (its speech is noise)."""
    return (Path(directory) / TINY_MARKER).is_file()
