"""Run the app in a background thread on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                ws_max_size=app.state.settings.max_ws_message_bytes * 4)
        from audio_server.lifecycle import GracefulServer

        self.server = GracefulServer(config)  # stop() drains sessions like a SIGTERM does
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="live-server")

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def gauge(self, name: str, **labels) -> float:
        return self.app.state.metrics.registry.get_sample_value(name, labels) or 0.0
