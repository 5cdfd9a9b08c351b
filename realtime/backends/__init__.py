"""Response backends: one small protocol (`base.ResponseBackend`), one implementation per pipeline.

- `cascade.CascadeBackend` — Whisper → the shared chat engine → Piper;
- `unified.UnifiedBackend` — dual-codebook tokens → the audio LLM (MTP) → the streaming vocoder;
- `step_audio2.StepAudio2Backend` — audio-encoder rows → Step-Audio 2 → streaming token2wav.

`new_backend` is the one place that picks one, from the hub's `pipeline`. Importing this package loads
neither (each pulls in its models' code).
"""

from __future__ import annotations

from realtime.hub import RealtimeModels


def new_backend(session_id: str, models: RealtimeModels, engine, options):
    """The backend of a new session: `models.pipeline` says which; `engine` (the chat engine or an async
    loader of it) is the cascade's LLM; `options` the session's `PipelineOptions`."""
    if models.pipeline == "unified":
        from realtime.backends.unified import UnifiedBackend

        return UnifiedBackend(session_id, models.unified, options)
    if models.pipeline == "step-audio":
        from realtime.backends.step_audio2 import StepAudio2Backend

        return StepAudio2Backend(session_id, models.step_audio2, options)
    if models.pipeline == "cascade":
        from realtime.backends.cascade import CascadeBackend

        return CascadeBackend(session_id, models, engine, options)
    raise ValueError(f"unknown pipeline {models.pipeline!r}; choose cascade, unified or step-audio")
