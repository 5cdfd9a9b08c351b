"""WebRTC service settings that need parsing: STUN/TURN servers and the addresses offered to peers.

Pure functions (no aiortc import), so `Settings` can validate them at start-up and say how to fix a
bad value.

- `ice_servers` (`VOXLINE_ICE_SERVERS`): empty = none, so no packet ever leaves for a STUN server and only
  host candidates are offered (enough on loopback and on a LAN). Otherwise a JSON list of RTCIceServer
  objects as browsers take them — `[{"urls": "turn:turn.example:3478", "username": "u", "credential": "p"}]`
  — or a comma-separated list of `stun:`/`turn:`/`turns:` URLs without credentials.
- `ice_host_addresses` (`VOXLINE_ICE_HOST_ADDRESSES`): the local addresses offered as ICE host candidates.
  Empty = chosen from the listen address: a loopback host offers 127.0.0.1 only (the page and the browser
  are on this machine, and nothing about the LAN is revealed), any other host offers every interface.
"""

from __future__ import annotations

import ipaddress
import json

_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


class IceConfigError(ValueError):
    pass


def _check_url(url: object, where: str) -> str:
    if not isinstance(url, str) or not url.startswith(_SCHEMES) or len(url) <= 6:
        raise IceConfigError(f"{where}: {url!r} is not a STUN/TURN URL (stun:host:port, turn:host:port, "
                             "turns:host:port)")
    return url


def parse_ice_servers(text: str) -> list[dict]:
    """`ice_servers` setting → a list of `{"urls": [..], "username"?, "credential"?}` (browser shape)."""
    text = (text or "").strip()
    if not text:
        return []
    if not text.startswith(("[", "{")):
        return [{"urls": [_check_url(u.strip(), "ice_servers")]} for u in text.split(",") if u.strip()]
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IceConfigError(f"ice_servers is not valid JSON ({exc.msg} at {exc.pos}); write a list like "
                             '[{"urls": "turn:host:3478", "username": "u", "credential": "p"}]') from None
    if not isinstance(raw, list):
        raise IceConfigError("ice_servers must be a JSON list of objects with 'urls' (wrap one server in [...])")
    servers = []
    for i, entry in enumerate(raw):
        where = f"ice_servers[{i}]"
        if not isinstance(entry, dict) or "urls" not in entry:
            raise IceConfigError(f"{where} must be an object with 'urls'")
        urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
        server: dict = {"urls": [_check_url(u, where) for u in urls]}
        for key in ("username", "credential"):
            if entry.get(key) is not None:
                if not isinstance(entry[key], str):
                    raise IceConfigError(f"{where}.{key} must be a string")
                server[key] = entry[key]
        if any(u.startswith("turn") for u in server["urls"]) and not ("username" in server and "credential" in server):
            raise IceConfigError(f"{where}: a TURN server needs 'username' and 'credential'")
        servers.append(server)
    return servers


def check_host_addresses(addresses: tuple[str, ...]) -> None:
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise IceConfigError(f"ice_host_addresses: {a!r} is not an IP address") from None


def host_addresses(listen_host: str, configured: tuple[str, ...]) -> tuple[str, ...] | None:
    """Addresses to offer as host candidates; None = every interface (aioice's own choice)."""
    if configured:
        return tuple(configured)
    host = listen_host.strip("[]")
    if host == "localhost":
        return ("127.0.0.1",)
    try:
        if ipaddress.ip_address(host).is_loopback:
            return ("127.0.0.1",) if ipaddress.ip_address(host).version == 4 else ("::1",)
    except ValueError:  # a host name: let the interfaces decide
        pass
    return None

