"""Secrets out of uvicorn's request lines.

Browsers cannot set headers on a WebSocket, so keys also arrive as `?api_key=KEY` — and uvicorn writes
every request's path with its query: HTTP lines on `uvicorn.access`, WebSocket handshakes
(`"WebSocket /v1/realtime?api_key=…" [accepted]`) on `uvicorn.error`. `RedactSecrets` rewrites the value of
each secret query parameter to `***` before any handler formats the line. `GracefulServer.startup` installs
it, so `voxline serve` and `LiveServer` (tests, benchmarks) both log without secrets.
"""

from __future__ import annotations

import logging
import re

#: query parameters whose values are credentials (ours: api_key; common spellings of the same thing)
SECRET_PARAMS = ("api_key", "apikey", "key", "token", "access_token", "stream_token", "password", "secret")
MASK = "***"
LOGGERS = ("uvicorn.access", "uvicorn.error")

# `?` or `&`, a secret name (any case, maybe %-encoded `_`), `=`, then the value up to the next separator.
_SECRET = re.compile(r"([?&](?:%s)=)[^&#\s\"']*" % "|".join(re.escape(p).replace("_", "(?:_|%5[fF])")
                                                          for p in SECRET_PARAMS), re.IGNORECASE)


def redact(text: str) -> str:
    """`/v1/realtime?api_key=k1&model=m` → `/v1/realtime?api_key=***&model=m`."""
    return _SECRET.sub(lambda m: m.group(1) + MASK, text) if "=" in text else text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and string arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install() -> None:
    """Add the filter to uvicorn's loggers (once; logging.config leaves a logger's filters in place)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
