"""Shared support for the reliability and shutdown tests (no tests here): a model hub of test doubles
(energy VAD, tone TTS, canned ASR — no model is loaded, so a live server starts in a fraction of a
second), live servers with chosen limits, a raw realtime client, and server-side probes."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import websockets

from audio_server.live import LiveServer
from audio_server.settings import Settings
from tests.realtime.fakes import CannedASR, FakeEngine, FakeModels, Script, ToneTTS, silence, tone
from tts.piper_tts import SentenceAudio

STORY = tuple(f"This is sentence number {i} of a very long story. " for i in range(200))


class _FakeASR(CannedASR):
    def transcribe_partial(self, audio, language=None):
        return "hello"


class _FakeTTS(ToneTTS):
    """The tone TTS, with the streaming interface the TTS socket uses."""

    def resolve_voice(self, voice=None) -> str:
        return "joe"

    def synthesize(self, text: str, options=None):
        yield SentenceAudio(text, self.synthesize_all(text))


class FakeHub(FakeModels):
    """What the app needs from `ModelHub`, with the realtime test doubles inside."""

    def __init__(self, settings: Settings):
        super().__init__(asr_model=_FakeASR(), tts_model=_FakeTTS())
        self.settings = settings
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="fake-model")

    def llm(self, name=None):
        return None

    def resolve_asr_name(self, requested, batch=False):
        return "fake-asr"

    def load_all(self) -> None:
        pass

    def close(self) -> None:
        self.executor.shutdown(wait=False)


class ByInstructions(FakeEngine):
    """A scripted engine that answers by the session's instructions (the system message), so that two
    concurrent sessions get their own script whatever order their requests arrive in."""

    def __init__(self, scripts: dict[str, Script], default: Script | None = None):
        super().__init__(default=default)
        self.by_instructions = scripts

    def stream(self, request):
        self.requests.append(request)
        system = request.messages[0].content if request.messages and request.messages[0].role == "system" else ""
        return self._run(self.by_instructions.get(system, self.default))


def fake_server(engine: FakeEngine | None = None, **overrides) -> LiveServer:
    from audio_server.app import create_app

    settings = replace(Settings(), **overrides)
    app = create_app(settings, FakeHub(settings))
    app.state.chat_engine = engine or FakeEngine()
    return LiveServer(app).start()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def append(pcm) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": b64(pcm.tobytes())})


class RawClient:
    """A realtime client on plain `websockets`: every event it reads, with arrival times, and the close."""

    def __init__(self, ws):
        self.ws = ws
        self.events: list[dict] = []
        self.times: list[float] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._new = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, **kwargs) -> "RawClient":
        return cls(await websockets.connect(url, max_size=None, **kwargs))

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.events.append(json.loads(message))
                self.times.append(time.perf_counter())
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason or ""
            self._new.set()

    async def send(self, event: dict | str) -> None:
        await self.ws.send(event if isinstance(event, str) else json.dumps(event))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]

    async def wait(self, type_: str, after: int = 0, timeout: float = 30.0) -> dict:
        deadline = time.perf_counter() + timeout
        while True:
            for e in self.events[after:]:
                if e["type"] == type_:
                    return e
            if self.task.done() or time.perf_counter() > deadline:
                raise AssertionError(f"no {type_!r} after event {after}; got {self.types()[after:]} "
                                     f"(closed {self.close_code} {self.close_reason!r})")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 0.2)
            except TimeoutError:
                pass

    async def closed(self, timeout: float = 30.0) -> tuple[int | None, str]:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return self.close_code, self.close_reason

    def abort(self) -> None:
        """Vanish without a close frame (a crashed client or a dropped network)."""
        self.ws.transport.abort()


class NonReadingClient:
    """A WebSocket client on a blocking socket with a tiny receive buffer, driven by `websockets`' sans-I/O
    protocol: it reads only when told to (`drain()`), so "a client that stops reading" is exactly that."""

    def __init__(self, url: str, rcvbuf: int = 4096):
        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((uri.host, uri.port))
        self.sock.settimeout(10)
        self.proto = ClientProtocol(uri, max_size=None)
        self.proto.send_request(self.proto.connect())
        self.sock.sendall(b"".join(self.proto.data_to_send()))
        self.received = 0
        self.messages: list[str] = []
        while self.proto.handshake_exc is None and self.proto.state is State.CONNECTING:
            self._read_once()
        assert self.proto.handshake_exc is None, self.proto.handshake_exc

    def _read_once(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self.proto.receive_eof()
            return False
        self.received += len(data)
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            text = getattr(event, "data", None)
            if getattr(event, "opcode", None) is not None and event.opcode.name == "TEXT":
                self.messages.append(bytes(text).decode())
        out = self.proto.data_to_send()
        if out:
            try:
                self.sock.sendall(b"".join(out))
            except OSError:
                pass
        return True

    def recv_json(self) -> dict:
        while not self.messages:
            self._read_once()
        return json.loads(self.messages.pop(0))

    def send(self, event: dict) -> None:
        self.proto.send_text(json.dumps(event).encode())
        self.sock.sendall(b"".join(self.proto.data_to_send()))

    def drain(self) -> tuple[int | None, str]:
        """Read everything until the connection ends; the close code and reason the server sent."""
        try:
            while self._read_once():
                if self.proto.close_rcvd is not None:
                    break
        except OSError:  # reset: the server cut the connection without a close frame
            pass
        rcvd = self.proto.close_rcvd
        self.sock.close()
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


def on_server_loop(live: LiveServer, fn, timeout: float = 10.0):
    """Run `fn()` (sync, or returning an awaitable) on the server's event loop and return its result."""

    async def call():
        out = fn()
        if asyncio.iscoroutine(out):
            out = await out
        return out

    loop = live.server.loop
    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)


def wait_until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def session_tasks(live: LiveServer) -> list[str]:
    """Names of the realtime session tasks still alive on the server (`rt:<session>:…`)."""
    return [t.get_name() for t in on_server_loop(live, asyncio.all_tasks) if t.get_name().startswith("rt:")]


__all__ = ["STORY", "FakeHub", "ByInstructions", "fake_server", "append", "RawClient", "NonReadingClient",
           "on_server_loop", "wait_until", "session_tasks", "Script", "silence", "tone"]
