"""Which of an offer's ICE candidates the server may send connectivity checks to.

Every `a=candidate` line of an offer is an address the server's ICE agent (aioice) will send STUN requests
to, so an offer could point the server at any host — the issue-15 probe named 198.51.100.7 and 203.0.113.x —
at this machine's own local services, or (with a `.local` name) make it bind UDP 0.0.0.0:5353 and join the
mDNS group. Candidates are therefore screened before aiortc sees the offer:

- a malformed candidate (a port outside 1–65535, a non-numeric field, a missing `typ`) → 400, the offer is
  wrong and says so;
- a well-formed candidate the server must not use is dropped (logged): multicast/broadcast/unspecified
  addresses; addresses in `ice_deny_networks`; host names other than mDNS names (they would need a DNS
  lookup); `.local` mDNS names unless `webrtc_mdns` is on and the server is not loopback-only (aioice
  resolves them and its answers are taken as they come: enable it only on a LAN you trust); a loopback
  address unless the server offers one; and, when the server serves on loopback only (no ICE servers), any
  address that is not one of this machine's own (a page on this machine may offer its LAN address);
- an offer whose candidates in a media section were all dropped → 400: the call could never connect.

Pure functions over the SDP text; nothing here imports aiortc.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from audio_server.errors import APIError
from audio_server.webrtc_config import host_addresses, parse_ice_servers

MAX_CANDIDATES = 64  # a browser offers 2–10; each one is checked (STUN sent) by the server
_MDNS_NAME = re.compile(r"^[a-zA-Z0-9-]{1,63}\.local$")  # what aioice resolves over mDNS
_TRANSPORTS = ("udp", "tcp")
_TYPES = ("host", "srflx", "prflx", "relay")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BadCandidate(APIError):
    def __init__(self, message: str):
        super().__init__(400, message, code="invalid_candidate", param="sdp")


@dataclass(frozen=True)
class CandidatePolicy:
    """Who the server may send ICE checks to, from its settings (see the module docstring)."""

    loopback: bool  # the server offers a loopback address
    remote: bool  # the server can reach other hosts (a non-loopback address, every interface, or ICE servers)
    mdns: bool
    deny: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    own: frozenset[IPAddress] = frozenset()  # this machine's addresses

    @classmethod
    def from_settings(cls, settings) -> "CandidatePolicy":
        offered = host_addresses(settings.host, settings.ice_host_addresses)
        ips = [ipaddress.ip_address(a) for a in offered] if offered is not None else []
        loopback = any(ip.is_loopback for ip in ips)
        remote = offered is None or any(not ip.is_loopback for ip in ips) or bool(parse_ice_servers(settings.ice_servers))
        return cls(loopback=loopback, remote=remote, mdns=settings.webrtc_mdns and remote,
                   deny=parse_networks(settings.ice_deny_networks), own=frozenset() if remote else own_addresses())

    def refusal(self, address: str) -> str | None:
        """Why the server must not send checks to `address`, or None when it may."""
        if _MDNS_NAME.match(address):
            if self.mdns:
                return None
            return "an mDNS name (not resolved: VOXLINE_WEBRTC_MDNS is off" + \
                   (")" if self.remote else ", and this server serves on loopback only)")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "a host name (candidates must carry IP addresses)"
        if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
            return "not a unicast address"
        if any(ip in net for net in self.deny if net.version == ip.version):
            return "in ice_deny_networks"
        if ip.is_loopback:
            return None if self.loopback else "a loopback address (this server offers none: it would be itself)"
        if not self.remote and ip not in self.own:
            return "not an address of this machine (the server serves on loopback only)"
        return None


def parse_networks(values: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`ice_deny_networks` → networks; a bad entry raises ValueError saying which."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"ice_deny_networks: {value!r} is not an IP network (write 10.0.0.0/8 or "
                             "fd00::/8)") from None
    return tuple(networks)


def own_addresses() -> frozenset[IPAddress]:
    """Every address of this machine's interfaces (ifaddr: the enumeration aioice itself uses)."""
    import ifaddr

    found: set[IPAddress] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                found.add(ipaddress.ip_address(text))
            except ValueError:
                continue
    return frozenset(found)


def candidate_address(value: str) -> str:
    """The connection address of one `a=candidate:` value, after checking its grammar (RFC 8839 §5.1)."""
    bits = value.split()
    shown = value if len(value) <= 120 else value[:120] + "…"
    if len(bits) < 8 or bits[6] != "typ":
        raise BadCandidate(f"ICE candidate {shown!r} is not 'foundation component transport priority address "
                           "port typ type'")
    _, component, transport, priority, address, port, _, kind = bits[:8]
    if not (component.isdigit() and 1 <= int(component) <= 256):
        raise BadCandidate(f"ICE candidate {shown!r}: component {component!r} is not a number from 1 to 256")
    if transport.lower() not in _TRANSPORTS:
        raise BadCandidate(f"ICE candidate {shown!r}: transport {transport!r} is not udp or tcp")
    if not (priority.isdigit() and int(priority) < 2 ** 32):
        raise BadCandidate(f"ICE candidate {shown!r}: priority {priority!r} is not a 32-bit number")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise BadCandidate(f"ICE candidate {shown!r}: port {port!r} is not between 1 and 65535")
    if kind not in _TYPES:
        raise BadCandidate(f"ICE candidate {shown!r}: type {kind!r} is not host, srflx, prflx or relay")
    extensions = bits[8:]
    for name, val in zip(extensions[::2], extensions[1::2]):
        if name == "rport" and not (val.isdigit() and int(val) <= 65535):
            raise BadCandidate(f"ICE candidate {shown!r}: rport {val!r} is not between 0 and 65535")
    return address


def screen_candidates(sdp: str, policy: CandidatePolicy) -> tuple[str, list[str]]:
    """The SDP (CRLF lines, as `webrtc_offer.check_sdp` returns it) without the candidates the server may not
    use, and a line per dropped candidate saying why. Raises `BadCandidate` (400) for a malformed candidate,
    too many, or a media section left with none."""
    kept_lines: list[str] = []
    dropped: list[str] = []
    sections: list[tuple[int, int]] = [(0, 0)]  # per section: candidates offered, kept
    count = 0
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            sections.append((0, 0))
        if line.startswith("a=candidate:"):
            count += 1
            if count > MAX_CANDIDATES:
                raise BadCandidate(f"the offer carries more than {MAX_CANDIDATES} ICE candidates")
            address = candidate_address(line[len("a=candidate:"):])
            offered, kept = sections[-1]
            why = policy.refusal(address)
            if why is not None:
                dropped.append(f"{address}: {why}")
                sections[-1] = (offered + 1, kept)
                continue
            sections[-1] = (offered + 1, kept + 1)
        kept_lines.append(line)
    if any(offered and not kept for offered, kept in sections):
        raise BadCandidate("none of the offer's ICE candidates can be used by this server (" + "; ".join(dropped[:4])
                           + (" …" if len(dropped) > 4 else "") + "): offer an address it may reach")
    return "\r\n".join(kept_lines), dropped
