"""Prometheus metrics. One registry per app instance, so tests can build many apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("voxline_sessions_active", "Open streaming sessions", ["kind"], registry=r)
        self.sessions_total = Counter("voxline_sessions_total", "Streaming sessions opened", ["kind"], registry=r)
        self.requests = Counter("voxline_http_requests_total", "HTTP API requests", ["route", "status"], registry=r)
        self.asr_rtf = Histogram("voxline_asr_rtf", "ASR processing time / audio duration", ["model"],
                                 buckets=_RTF_BUCKETS, registry=r)
        self.tts_rtf = Histogram("voxline_tts_rtf", "TTS synthesis time / audio duration", buckets=_RTF_BUCKETS,
                                 registry=r)
        self.tts_first_chunk = Histogram("voxline_tts_first_chunk_seconds", "Request to first audio chunk",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.asr_final_latency = Histogram("voxline_asr_final_latency_seconds",
                                           "End of speech (VAD) to final transcript sent", buckets=_LATENCY_BUCKETS,
                                           registry=r)
        self.realtime_turn_latency = Histogram(
            "voxline_realtime_turn_latency_seconds",
            "Realtime turn latency: end of user speech (or commit / response.create) to first audio delta sent",
            ["trigger"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ws_errors = Counter("voxline_ws_protocol_errors_total", "Protocol errors sent on sockets",
                                 ["kind", "code"], registry=r)
