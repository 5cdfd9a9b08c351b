"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status.

A route that fails unexpectedly is answered here, inside the app: `UnhandledErrors` (innermost of our
middleware) logs it once and sends a 500 JSON body, and the exception goes no further. Starlette's own
last-resort handler re-raises after answering, and uvicorn then closes the connection: the next request
a client sent on that keep-alive connection was reset."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audio_server.limits import too_large

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_response(status: int, message: str, *, code: str | None = None, param: str | None = None,
                   type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(APIError(status, message, code=code, param=param, type=type).body(), status_code=status)


class UnhandledErrors:
    """ASGI middleware: an exception from a route (anything its handlers did not turn into an HTTP error)
    becomes a logged 500 `internal_error`, and the connection stays usable. A response already started
    cannot be replaced: then the exception goes on (uvicorn cuts the half-sent response)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started or too_large(exc):  # a too-large body is answered 413 by RequestLimits, outside
                raise
            log.error("unhandled error in %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            await error_response(500, "internal server error", code="internal_error",
                                 type="server_error")(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """The JSON error handlers, and `UnhandledErrors` as the innermost middleware (call this before
    adding any other)."""
    app.add_middleware(UnhandledErrors)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        message = f"{loc}: {first.get('msg', 'invalid request')}" if loc else first.get("msg", "invalid request")
        return error_response(400, message, code="invalid_request", param=loc or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), code=getattr(exc, "code", None) or "http_error")

    @app.exception_handler(Exception)  # last resort: an error in a middleware outside UnhandledErrors
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal server error", code="internal_error", type="server_error")
