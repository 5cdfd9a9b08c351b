"""Service settings: one frozen dataclass, each field documented and bounded. Built from CLI flags or
`VOXLINE_*` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

PRESETS = ("embedded", "tiny", "step-audio", "step-audio-tts")
PIPELINES = ("cascade", "unified", "step-audio")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    preset: str = "embedded"
    #: realtime response pipeline: cascade (ASR → LLM → TTS) or unified (audio tokens → audio LLM with MTP →
    #: vocoder; the tiny preset only: random weights, mechanics not speech)
    pipeline: str = "cascade"
    #: a Step-Audio 2 checkpoint directory in the official layout (config.json, shards, tokenizer files,
    #: token2wav/): what the step-audio preset serves (its pipeline is step-audio, set with the preset); for the
    #: step-audio-tts preset, a Step-Audio-TTS-3B download (Step-Audio-TTS-3B/ and Step-Audio-Tokenizer/ side by
    #: side, runtime.step1.layout), served on /v1/audio/speech
    checkpoint: str = ""
    #: answers the step-audio / step-audio-tts preset decodes at once in its one stepping loop (more wait for a
    #: free slot)
    step_audio_slots: int = 8
    #: ASR model of the preset: whisper-base (default) or whisper-tiny.en (smaller, faster)
    asr_model: str = "whisper-base"
    #: CPU threads for one CTranslate2 decode
    asr_threads: int = 2
    #: window in which a single utterance (streaming final, realtime turn) is encoded, in seconds. 20.4 is
    #: ~3× cheaper than Whisper's 30 s on CPU with near-identical text (asr/whisper_asr.py); 30 = always
    #: faster-whisper's own 30 s decode
    asr_utterance_window_s: float = 20.4
    #: beam width for the final text of a short utterance (realtime and phone turns); 1 =
    #: greedy. Beam 5 cut WER on phone speech in other voices from 47.6% to 41.4% for ~20% more decode time
    #: (bench/RESULTS.md "Phone-line ASR")
    asr_beam_size: int = 5
    #: language the ASR assumes where an HTTP transcription names none (sockets default to en); empty =
    #: detect it per request. Detection on a few seconds of narrow-band speech can pick another script
    asr_language: str = ""
    #: language of phone calls (Twilio) unless the stream's customParameters.language names another
    phone_language: str = "en"
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
    #: browser origins (scheme://host[:port]) allowed to call the HTTP routes and open sockets, besides the
    #: server's own page (its loopback origins on the listening port, and `public_url`); "*" = any. The
    #: Host header never counts (DNS rebinding): audio_server/http_security.py
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    #: serve /metrics without an API key (for a Prometheus scraper that cannot send `Authorization:
    #: Bearer KEY`); off = /metrics needs a key whenever keys are configured
    metrics_public: bool = False
    #: public base URL as callers see it (e.g. https://voice.example.com); used in TwiML and to check
    #: Twilio signatures behind a proxy. Empty = taken from each request's Host header. Its origin is an
    #: allowed browser origin, and its host a name the server answers to on a loopback connection
    public_url: str = ""
    #: Twilio auth token; when set, /twilio/voice rejects requests without a valid X-Twilio-Signature
    twilio_auth_token: str = ""
    #: build the URL a Twilio signature covers (and the TwiML stream URL) from X-Forwarded-Proto/-Host. Only
    #: behind a proxy that sets them itself: else a caller picks the host its replayed signature is checked
    #: against. Off = `public_url` when set, else the request's own scheme and Host
    trust_proxy_headers: bool = False
    #: a /twilio/media socket must send a `start` frame (with its stream token when auth is configured)
    #: within this many seconds of connecting; until then it holds no session slot
    twilio_start_timeout_s: float = 5.0
    #: most streaming sessions (all socket kinds together) open at once; more are refused at the handshake
    #: (HTTP 403, JSON body with code too_many_sessions)
    max_sessions: int = 64
    # ---- limits under load (tests/test_reliability_limits.py; close codes in audio_server/ws_common.py) ----
    #: most sessions one API key may hold open at once (HTTP 429 too_many_sessions_for_key beyond);
    #: 0 = only max_sessions applies. Counted only when api_keys are configured
    max_sessions_per_key: int = 0
    #: largest decoded audio in one realtime input_audio_buffer.append (OpenAI's limit is 15 MiB)
    max_append_bytes: int = 15 * 1024 * 1024
    #: most uncommitted input audio a realtime session holds; without VAD an append beyond it is refused
    #: (input_audio_buffer_full), with server VAD a turn that long is committed as it is
    max_input_buffer_s: float = 600.0
    #: longest a streaming session may stay open (OpenAI: 60 min); then error session_expired, close 1008
    max_session_s: float = 3600.0
    #: a socket that receives no message this long is closed (error idle_timeout, close 1008); 0 = never
    idle_timeout_s: float = 300.0
    #: a send the client does not read within this is a slow consumer: the session ends, close 1008
    send_timeout_s: float = 10.0
    #: protocol errors (bad or refused messages) a streaming ASR/TTS socket may cause in one second; one
    #: more and it is closed (error too_many_errors, close 1008). Error log lines are one per session per second
    max_protocol_errors_per_s: int = 50
    #: memory the text of one realtime conversation may hold (items' text, transcripts, tool calls and
    #: outputs); the oldest items are dropped beyond it, and a single item larger than it is refused
    max_conversation_bytes: int = 4 * 1024 * 1024
    #: events a realtime session may queue for its client (audio is paced; this bounds a client that
    #: floods requests without reading replies); beyond it the client is dropped as a slow consumer
    max_queued_events: int = 2048
    #: silence inside a realtime turn, in ms, at which the session transcribes the turn so far and (with
    #: realtime_speculative_responses) starts its answer — LLM and TTS — sending nothing: it goes out the moment
    #: the turn ends at that pause, and is dropped without a trace if the user goes on (realtime/speculation.py).
    #: 160–2000; the earlier, the more of the answer is ready at the turn's end (and the more is thrown away)
    realtime_speculative_ms: int = 160
    #: start answers speculatively at that pause (off: only the transcription is speculative)
    realtime_speculative_responses: bool = True
    #: a new realtime session's turn detection (a client may change it with session.update): semantic_vad (the
    #: audio — Smart Turn — and the words so far — the chat model — decide when a turn is over, at eagerness
    #: auto) or server_vad (500 ms of silence). bench/voice_turn.py's pause set measures the difference
    realtime_turn_detection: str = "semantic_vad"
    #: largest HTTP request body (any route); bigger ones get 413 before they are read
    max_request_bytes: int = 32 * 1024 * 1024
    #: longest audio /v1/audio/transcriptions decodes (a small compressed file can hold hours)
    max_upload_audio_s: float = 1800.0
    #: on shutdown (SIGTERM), how long open sessions get to finish: responses cancelled with
    #: response.done, sockets closed with 1001; stragglers are then cut
    shutdown_timeout_s: float = 5.0
    #: WebRTC STUN/TURN servers: JSON list of {"urls", "username", "credential"} or comma-separated
    #: stun:/turn: URLs. Empty = none: host candidates only (loopback or LAN), nothing contacted outside
    ice_servers: str = ""
    #: local addresses offered as WebRTC host candidates; empty = 127.0.0.1 when `host` is loopback,
    #: else every interface
    ice_host_addresses: tuple[str, ...] = field(default_factory=tuple)
    #: a WebRTC peer that has not connected this long after its answer is closed
    webrtc_connect_timeout_s: float = 30.0
    #: a connected WebRTC peer that sends no media and no data-channel message this long is closed
    #: (a browser tab that vanished without a goodbye); ICE consent checks catch it after ~30 s too
    webrtc_idle_timeout_s: float = 20.0
    #: inbound WebRTC audio held back to reorder late packets, in 20 ms frames. aiortc holds 4 (80 ms);
    #: on loopback and LAN packets arrive in order, and each held frame delays barge-in by 20 ms.
    #: Raise it for lossy or jittery paths (a packet later than this is dropped)
    webrtc_jitter_frames: int = 1
    #: resolve `.local` (mDNS) ICE candidates of WebRTC offers: aioice then binds UDP 0.0.0.0:5353 and joins
    #: the mDNS group, and takes whatever a host on the LAN answers. Off = such candidates are dropped; never
    #: used by a server that serves on loopback only (audio_server/webrtc_candidates.py)
    webrtc_mdns: bool = False
    #: networks (CIDR, comma-separated) the server never sends WebRTC connectivity checks to, whatever an
    #: offer's candidates say, e.g. 169.254.0.0/16,10.0.0.0/8. Empty = none beyond the built-in rules
    ice_deny_networks: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {self.pipeline!r}; choose one of {', '.join(PIPELINES)}")
        if self.preset == "step-audio":
            if self.pipeline not in ("cascade", "step-audio"):
                raise ValueError("the step-audio preset answers realtime sessions with its own pipeline (step-audio)")
            object.__setattr__(self, "pipeline", "step-audio")
            if not self.checkpoint:
                raise ValueError("the step-audio preset needs --checkpoint DIR (a Step-Audio 2 checkpoint in the "
                                 "official layout; nothing is downloaded)")
            from pathlib import Path

            if not Path(self.checkpoint, "config.json").is_file():
                raise ValueError(f"--checkpoint {self.checkpoint!r} is not a checkpoint directory (no config.json)")
            if not 1 <= self.step_audio_slots <= 256:
                raise ValueError("step_audio_slots must be between 1 and 256")
        elif self.preset == "step-audio-tts":
            if self.pipeline != "cascade":
                raise ValueError("the step-audio-tts preset serves speech only (/v1/audio/speech); realtime sessions "
                                 "keep the cascade pipeline")
            if not self.checkpoint:
                raise ValueError("the step-audio-tts preset needs --checkpoint DIR (a Step-Audio-TTS-3B download in "
                                 "the official layout; nothing is downloaded)")
            from runtime.step1.layout import resolve_layout

            resolve_layout(self.checkpoint)  # a CheckpointError (a ValueError) naming every missing file
            if not 1 <= self.step_audio_slots <= 256:
                raise ValueError("step_audio_slots must be between 1 and 256")
        elif self.pipeline == "step-audio":
            raise ValueError("the step-audio pipeline needs the step-audio preset (--preset step-audio --checkpoint DIR)")
        if self.pipeline == "unified" and self.preset != "tiny":
            raise ValueError(f"the unified pipeline has models for the tiny preset only (random weights), not "
                             f"{self.preset!r}: use preset tiny, or pipeline cascade")
        if not 0 < self.port < 65536:
            raise ValueError("port must be between 1 and 65535")
        if not 1 <= self.model_workers <= 64 or not 1 <= self.asr_threads <= 64:
            raise ValueError("model_workers and asr_threads must be between 1 and 64")
        if not 1 <= self.max_sessions <= 100_000:
            raise ValueError("max_sessions must be between 1 and 100000")
        if self.max_upload_bytes < 1024 or self.max_ws_message_bytes < 1024:
            raise ValueError("max_upload_bytes and max_ws_message_bytes must be at least 1024")
        if not 1 <= self.asr_beam_size <= 10:
            raise ValueError("asr_beam_size must be between 1 and 10")
        for name in ("asr_language", "phone_language"):
            value = getattr(self, name)
            if value and not (value.isascii() and value.isalpha() and 2 <= len(value) <= 3):
                raise ValueError(f"{name} must be an ISO-639-1 code such as 'en' (got {value!r})")
        if not 10.0 <= self.asr_utterance_window_s <= 30.0:
            raise ValueError("asr_utterance_window_s must be between 10 and 30 seconds (Whisper's window)")
        self._check_limits()
        if not 1.0 <= self.webrtc_connect_timeout_s <= 600 or not 1.0 <= self.webrtc_idle_timeout_s <= 3600:
            raise ValueError("webrtc_connect_timeout_s must be in [1, 600] s and webrtc_idle_timeout_s in [1, 3600] s")
        if not 1 <= self.webrtc_jitter_frames <= 8:
            raise ValueError("webrtc_jitter_frames must be between 1 and 8 (20 ms frames)")
        from audio_server.webrtc_config import check_host_addresses, parse_ice_servers

        parse_ice_servers(self.ice_servers)  # raises with a message that says how to write it
        check_host_addresses(self.ice_host_addresses)
        from audio_server.webrtc_candidates import parse_networks

        parse_networks(self.ice_deny_networks)
        from audio_server.http_security import BrowserPolicy

        BrowserPolicy.from_settings(self)  # allowed_origins and public_url must be origins (says how to write one)

    def _check_limits(self) -> None:
        if not 0 <= self.max_sessions_per_key <= self.max_sessions:
            raise ValueError("max_sessions_per_key must be between 0 (no per-key limit) and max_sessions")
        if not 1024 <= self.max_append_bytes <= 64 * 1024 * 1024:
            raise ValueError("max_append_bytes must be between 1 KiB and 64 MiB")
        if self.max_request_bytes < self.max_upload_bytes + 64 * 1024:
            raise ValueError(f"max_request_bytes ({self.max_request_bytes}) must exceed max_upload_bytes "
                             f"({self.max_upload_bytes}) by at least 64 KiB (the multipart envelope): raise "
                             "VOXLINE_MAX_REQUEST_BYTES too")
        for name, low, high in (("max_input_buffer_s", 1.0, 3600.0), ("max_session_s", 1.0, 7 * 86400.0),
                                ("send_timeout_s", 0.05, 600.0), ("max_upload_audio_s", 1.0, 86400.0),
                                ("shutdown_timeout_s", 0.0, 600.0), ("twilio_start_timeout_s", 0.1, 60.0)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be between {low:g} and {high:g} seconds")
        if not (self.idle_timeout_s == 0 or 0.05 <= self.idle_timeout_s <= 86400):
            raise ValueError("idle_timeout_s must be 0 (never) or between 0.05 and 86400 seconds")
        if not 1 <= self.max_protocol_errors_per_s <= 100_000:
            raise ValueError("max_protocol_errors_per_s must be between 1 and 100000")
        if not 64 * 1024 <= self.max_conversation_bytes <= 1024 ** 3:
            raise ValueError("max_conversation_bytes must be between 64 KiB and 1 GiB")
        if not 256 <= self.max_queued_events <= 1_000_000:  # above the stream lane's own 64 (realtime/outbox.py)
            raise ValueError("max_queued_events must be between 256 and 1000000")
        if self.realtime_turn_detection not in ("semantic_vad", "server_vad"):
            raise ValueError("realtime_turn_detection must be semantic_vad or server_vad")
        if not 160 <= self.realtime_speculative_ms <= 2000:
            raise ValueError("realtime_speculative_ms must be between 160 and 2000 (below 160 ms a turn's soft "
                             "ending is not yet in the audio a speculation reads)")

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """`VOXLINE_<FIELD>` environment variables, then explicit overrides (CLI flags) on top."""
        values: dict = {}
        for f in fields(cls):
            raw = os.environ.get(f"VOXLINE_{f.name.upper()}")
            if raw is None:
                continue
            if f.name in ("api_keys", "allowed_origins", "ice_host_addresses", "ice_deny_networks"):
                values[f.name] = tuple(k for k in raw.split(",") if k)
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            elif f.type in ("bool", bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
