"""Realtime voice sessions (OpenAI Realtime protocol): one session object per connection, typed events inside.

Layout (decide, then execute):
- `protocol`  — typed client events (parsed and validated), `ServerEvent`, the per-dialect `Serializer`
                (GA names, or beta names and shapes for `OpenAI-Beta: realtime=v1` clients);
- `config`    — session configuration and per-response overrides, from either dialect's JSON;
- `audio`     — wire formats (pcm16 24 kHz, G.711 μ-law / A-law 8 kHz), G.711 codecs, streaming resampling;
- `items`     — conversation items, ordering, truncation to what was heard, LLM context;
- `turns`     — input audio buffer and server-VAD turn detection (Silero);
- `session`   — `RealtimeSession`, the state machine: every input → typed commands (no awaits, no models);
- `runner`    — `SessionRunner`, executes commands: ASR jobs, response pipelines, cancellation, cleanup;
- `pipeline`  — one response: LLM stream → sentences → Piper → paced audio deltas;
- `outbox`    — outgoing events in two lanes (control never waits behind audio);
- `engine_provider` — where a session gets the shared `ChatEngine`.
The WebSocket edge is `audio_server/routes_realtime.py`.
"""
