"""Service settings: one frozen dataclass, each field documented and bounded. Built from CLI flags or
`VOXLINE_*` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

PRESETS = ("embedded", "tiny", "step-audio")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    preset: str = "embedded"
    #: ASR model of the preset: whisper-base (default) or whisper-tiny.en (smaller, faster)
    asr_model: str = "whisper-base"
    #: CPU threads for one CTranslate2 decode
    asr_threads: int = 2
    #: worker threads for model calls (ASR, TTS); more than the core count only adds contention
    model_workers: int = 2
    #: largest upload accepted by /v1/audio/transcriptions (OpenAI's limit is 25 MB)
    max_upload_bytes: int = 25 * 1024 * 1024
    #: longest text accepted by /v1/audio/speech (OpenAI's limit is 4096 characters)
    max_speech_chars: int = 4096
    #: largest single WebSocket message accepted by the streaming sockets
    max_ws_message_bytes: int = 1024 * 1024
    #: longest audio a streaming ASR session may send, in seconds (bounds memory and CPU per session)
    max_stream_seconds: float = 3600.0
    #: API keys; empty = no authentication (only allowed when listening on loopback)
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    #: extra browser origins allowed to open sockets (the server's own host is always allowed; "*" = any)
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    #: public base URL as callers see it (e.g. https://voice.example.com); used in TwiML and to check
    #: Twilio signatures behind a proxy. Empty = taken from each request's Host header
    public_url: str = ""
    #: Twilio auth token; when set, /twilio/voice rejects requests without a valid X-Twilio-Signature
    twilio_auth_token: str = ""
    #: most streaming sessions (all socket kinds together) open at once; more are refused with 1013
    max_sessions: int = 64

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if not 0 < self.port < 65536:
            raise ValueError("port must be between 1 and 65535")
        if not 1 <= self.model_workers <= 64 or not 1 <= self.asr_threads <= 64:
            raise ValueError("model_workers and asr_threads must be between 1 and 64")
        if not 1 <= self.max_sessions <= 100_000:
            raise ValueError("max_sessions must be between 1 and 100000")
        if self.max_upload_bytes < 1024 or self.max_ws_message_bytes < 1024:
            raise ValueError("max_upload_bytes and max_ws_message_bytes must be at least 1024")

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """`VOXLINE_<FIELD>` environment variables, then explicit overrides (CLI flags) on top."""
        values: dict = {}
        for f in fields(cls):
            raw = os.environ.get(f"VOXLINE_{f.name.upper()}")
            if raw is None:
                continue
            if f.name in ("api_keys", "allowed_origins"):
                values[f.name] = tuple(k for k in raw.split(",") if k)
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
