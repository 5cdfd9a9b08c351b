"""Realtime voice sessions (OpenAI Realtime protocol): one session object per connection, typed events inside.

Layout (decide, then execute):
- `protocol`  — typed client events (parsed and validated) and the Realtime JSON `Serializer` of server
                events (GA names, or beta names and shapes for `OpenAI-Beta: realtime=v1` clients);
- `events`    — the typed server events the session emits, what every transport edge reads;
- `host`      — `RealtimeHost`: session + runner + outbox of one connection, for every transport;
- `config`    — session configuration and per-response overrides, from either dialect's JSON;
- `audio`     — wire formats (pcm16 24 kHz, G.711 μ-law / A-law 8 kHz), G.711 codecs, streaming resampling;
- `items`     — conversation items, ordering, truncation to what was heard, LLM context;
- `turns`     — input audio buffer and server-VAD turn detection (Silero);
- `session`   — `RealtimeSession`, the state machine: every input → typed commands (no awaits, no models);
- `runner`    — `SessionRunner`, executes commands: ASR jobs, response pipelines, cancellation, cleanup;
- `pipeline`  — one response: LLM stream → sentences → Piper → paced audio deltas;
- `outbox`    — outgoing events in two lanes (control never waits behind audio);
- `engine_provider` — which chat LLM a session's `?model=` names (the engine comes through the host).
The edges are `audio_server/routes_realtime.py` (WebSocket), `webrtc_peer.py` and `routes_twilio_media.py`.
"""
