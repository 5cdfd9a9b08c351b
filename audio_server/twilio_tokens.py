"""Twilio call credentials: the stream token a webhook hands one call, and the memory of what was used.

Twilio cannot send our API key on the media socket (the Stream URL takes no query string, the handshake no
custom headers), so the authenticated webhook (`POST /twilio/voice`) gives the call a token in a TwiML
`<Parameter>` and the `start` frame brings it back. A token is

    v1.<expiry>.<nonce>.<hmac>     hmac = HMAC-SHA256(process secret, "v1.<expiry>.<nonce>.<callSid>")

- bound to one call: the MAC covers the webhook's CallSid, which must be the stream's callSid;
- expiring: Twilio opens the stream right after the webhook answers, so it must start within `TOKEN_TTL_S`;
- single use: its nonce is remembered from the first `start` until the token expires, so a second stream
  with it (at the same time or later) is refused;
- checked in constant time, and anything that is not the exact ASCII shape (non-ASCII, too long, garbage) is
  a plain refusal, never an exception.

The secret is random per process: tokens only ever come back to the process that minted them (the used
nonces live in its memory too), and no configured secret is reused as key material.

`SeenOnce` is the bounded memory: used nonces here, replayed webhook signatures in `routes_twilio`.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

TOKEN_TTL_S = 60.0  # from the webhook's answer to the stream's `start` frame (Twilio takes ~1 s)
MAX_REMEMBERED = 65_536  # entries only come from authenticated requests; this bounds memory all the same
_TOKEN = re.compile(r"v1\.([0-9]{10})\.([0-9a-f]{32})\.([0-9a-f]{64})")  # fullmatch on an ASCII str
MAX_CALL_SID = 64  # Twilio's are 34 characters ("CA" + 32 hex)


class SeenOnce:
    """A set whose entries expire: `add(key, until)` is True for a key not seen (or whose entry expired),
    False for one still remembered. Bounded: when `capacity` unexpired entries are held, `add` refuses
    (False) rather than forget one early, since forgetting would let that key through again."""

    def __init__(self, capacity: int = MAX_REMEMBERED, clock: Callable[[], float] = time.time):
        self.capacity, self.clock = capacity, clock
        self._until: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (until, key): the next to forget first

    def __len__(self) -> int:
        self._forget_expired()
        return len(self._until)

    def __contains__(self, key: str) -> bool:
        self._forget_expired()
        return key in self._until

    def add(self, key: str, until: float) -> bool:
        self._forget_expired()
        if key in self._until or len(self._until) >= self.capacity:
            return False
        self._until[key] = until
        heapq.heappush(self._expiry, (until, key))
        return True

    def _forget_expired(self) -> None:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            until, key = heapq.heappop(self._expiry)
            if self._until.get(key) == until:
                del self._until[key]


@dataclass(frozen=True)
class Refusal:
    """Why a token was not accepted (`code` goes into logs and metrics)."""

    code: str
    message: str


class StreamTokens:
    """Mints and claims stream tokens for one process (see the module docstring)."""

    def __init__(self, ttl_s: float = TOKEN_TTL_S, clock: Callable[[], float] = time.time,
                 capacity: int = MAX_REMEMBERED):
        self.ttl_s, self.clock = ttl_s, clock
        self._secret = secrets.token_bytes(32)
        self._used = SeenOnce(capacity, clock)

    def _mac(self, expiry: str, nonce: str, call_sid: str) -> str:
        return hmac.new(self._secret, f"v1.{expiry}.{nonce}.{call_sid}".encode(), hashlib.sha256).hexdigest()

    def issue(self, call_sid: str) -> str:
        expiry = f"{int(self.clock() + self.ttl_s) + 1:010d}"  # whole seconds, rounded up: never shorter
        nonce = secrets.token_hex(16)
        return f"v1.{expiry}.{nonce}.{self._mac(expiry, nonce, call_sid)}"

    def claim(self, token: object, call_sid: str) -> Refusal | None:
        """Accept `token` for the stream of `call_sid` and mark it used; None when accepted."""
        if not isinstance(token, str) or not token.isascii() or len(token) > 200:
            return Refusal("invalid_token", "the stream token is not one this server issued")
        match = _TOKEN.fullmatch(token)
        if match is None:
            return Refusal("invalid_token", "the stream token is not one this server issued")
        expiry, nonce, mac = match.groups()
        if not hmac.compare_digest(mac.encode(), self._mac(expiry, nonce, call_sid).encode()):
            return Refusal("invalid_token", "the stream token was not issued for this call")
        if int(expiry) <= self.clock():
            return Refusal("expired_token", f"the stream token expired (a stream must start within "
                                            f"{self.ttl_s:g} s of the webhook)")
        if not self._used.add(nonce, float(expiry)):
            return Refusal("token_used", "the stream token was already used by another stream")
        return None


def valid_call_sid(call_sid: str) -> bool:
    """A CallSid we are willing to sign: short printable ASCII (Twilio's are "CA" + 32 hex digits)."""
    return 0 < len(call_sid) <= MAX_CALL_SID and call_sid.isascii() and call_sid.isprintable()


def tokens_required(settings) -> bool:
    """Streams need a token whenever the service has any authentication configured."""
    return bool(settings.twilio_auth_token or settings.api_keys)


def stream_tokens(app) -> StreamTokens:
    """The app's token minter and checker (one per app: the webhook and the socket share it)."""
    tokens = getattr(app.state, "twilio_stream_tokens", None)
    if tokens is None:
        tokens = app.state.twilio_stream_tokens = StreamTokens()
    return tokens
