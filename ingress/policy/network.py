"""Client addresses: CIDR sets, and the real client behind trusted proxies.

Both run on the request path of every request a network rule or a
forwarding proxy applies to, so membership is memoised: the addresses of a
worker's clients repeat far more often than they change. Everything here is
pure apart from those bounded memos, which only save work: the caller passes
the peer address and the headers in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import TypeVar

from ingress.config.cidr import parse_cidr

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MEMO_SIZE = 4096
MAX_HOPS = 32
# The longest address worth parsing: a full IPv6 address with an embedded IPv4 part is 45
# characters; anything longer is not an address, and is neither parsed nor memoised.
_MAX_ADDRESS = 45 + 1 + 16  # room for a zone id, which is stripped

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

# Proxies repeat the same few header values and hops, and parsing an address with
# ipaddress costs microseconds, so both are memoised per process (see `_remember`).
_K = TypeVar("_K")
_V = TypeVar("_V")
_MEMO_VALUE_MAX = 256  # longer Forwarded values are parsed every time rather than held
_forwarded_memo: dict[bytes, list[str]] = {}  # header value -> its for= nodes
_forwarded_hops: dict[str, str] = {}  # hop -> canonical address, "" for none
_xff_hops: dict[str, str] = {}


def parse_address(text: str) -> Address | None:
    """An address as sockets and headers spell it; None if it is not one.

    A zone id (`fe80::1%eth0`) is dropped and an IPv4-mapped IPv6 address
    becomes the IPv4 address, so one client has one spelling whichever
    socket family or proxy reported it.
    """
    if len(text) > _MAX_ADDRESS:
        return None
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AddressSet:
    """A set of CIDRs, asked `address in networks` with addresses as strings.

    Networks are grouped by prefix length, so a lookup is one shift and one
    set probe per distinct length (at most 33 for IPv4 and 129 for IPv6),
    whatever the number of networks. Answers are memoised in a dict that is
    cleared when it reaches `memo_size` entries: a flood of distinct
    addresses costs a re-parse each, never unbounded memory.
    """

    __slots__ = ("_memo", "_memo_size", "_v4", "_v6", "networks")

    def __init__(self, cidrs: Iterable[str], memo_size: int = MEMO_SIZE) -> None:
        """Raises ValueError naming the bad entry and the fix (see `parse_cidr`)."""
        networks = [parse_cidr(text) for text in cidrs]
        self.networks = tuple(networks)
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for network in networks:
            table = v4 if network.version == 4 else v6
            shift = network.max_prefixlen - network.prefixlen
            table.setdefault(shift, set()).add(int(network.network_address) >> shift)
        # Longest prefixes first is no faster for a hit, but a tuple iterates faster than a dict.
        self._v4 = tuple(sorted(v4.items()))
        self._v6 = tuple(sorted(v6.items()))
        self._memo: dict[str, bool] = {}
        self._memo_size = memo_size

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __len__(self) -> int:
        return len(self.networks)

    def __repr__(self) -> str:
        return f"AddressSet({[str(n) for n in self.networks]!r})"

    def __contains__(self, address: str) -> bool:
        if not self.networks:
            return False
        memo = self._memo
        known = memo.get(address)
        if known is not None:
            return known
        parsed = parse_address(address)
        if parsed is None:
            if len(address) > _MAX_ADDRESS:
                return False  # not memoised: long garbage must not fill the memo
            found = False
        else:
            value = int(parsed)
            found = any(value >> shift in nets for shift, nets in (self._v4 if parsed.version == 4 else self._v6))
        if len(memo) >= self._memo_size:
            memo.clear()
        memo[address] = found
        return found


# RFC 7239 section 4: forwarded-pair = token "=" value; value = token / quoted-string.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(rb"[ \t]*(" + _TOKEN + rb")=(" + _TOKEN + rb'|"(?:[^"\\]|\\.)*")[ \t]*')
_UNESCAPE = re.compile(rb"\\(.)")
_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")


def forwarded_client(peer: str, headers: dict[bytes, bytes], trusted: AddressSet, max_hops: int = MAX_HOPS) -> str:
    """The address of the client that reached the first proxy this edge trusts.

    (0) A peer not in `trusted` is the client, whatever it claims: anyone can
        send X-Forwarded-For, and only a trusted proxy's word counts.
    (1) Read the hops from `Forwarded` (RFC 7239) if present, else from
        `X-Forwarded-For`. Proxies append, so the rightmost hop was added by
        the peer itself and the leftmost is the furthest claim.
    (2) Walk right to left. A trusted hop is another proxy of ours: keep
        walking. The first untrusted hop is the client.
    (3) A hop that is not an IP address (garbage, `unknown`, an obfuscated
        `_id`, a Forwarded element without `for=`) stops the walk: nothing to
        its left can be verified, so the last trusted hop is the client. A
        Forwarded header that does not parse stops the walk at the peer.
    (4) Every hop trusted: the leftmost one considered. At most `max_hops`
        hops are considered, so a long header costs bounded work (beyond
        splitting it, which `limits` bounds by its size).

    The answer is canonical (`str` of the address; IPv4-mapped becomes
    IPv4), so rate limits and logs see one spelling per client.
    """
    # (0)
    if peer not in trusted:
        return peer
    # (1)
    forwarded = headers.get(b"forwarded")
    rfc7239 = forwarded is not None
    if forwarded is not None:
        hops = _forwarded_memo.get(forwarded)
        if hops is None:
            hops = _forwarded_for(forwarded)
            _remember(_forwarded_memo, forwarded, hops, len(forwarded) <= _MEMO_VALUE_MAX)
        hops = hops[-max_hops:]
    else:
        xff = headers.get(b"x-forwarded-for")
        if xff is None:
            return peer
        hops = [hop.strip().decode("latin-1") for hop in xff.rsplit(b",", max_hops)[-max_hops:]]
    # (2)
    client = peer
    memo = _forwarded_hops if rfc7239 else _xff_hops
    for hop in reversed(hops):
        address = memo.get(hop)
        if address is None:
            address = _hop_address(hop, rfc7239) or ""
            _remember(memo, hop, address, len(hop) <= _MAX_ADDRESS + 8)
        # (3)
        if not address:
            return client
        client = address
        if address not in trusted:
            return address
    # (4)
    return client


def _remember(memo: dict[_K, _V], key: _K, value: _V, worth_it: bool) -> None:
    """Bounded memo: cleared when full, so a flood of distinct values costs time, never memory."""
    if worth_it:
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[key] = value


def _forwarded_for(value: bytes) -> list[str]:
    """The `for=` node of each element ("" for an element without one).

    A header that does not parse is one empty node: the walk stops at the
    peer, exactly as for a hop that is not an address.
    """
    hops: list[str] = []
    end = len(value)
    pos = _skip_separators(value, 0)
    node: str | None = None
    open_element = False
    while pos < end:
        open_element = True
        match = _PAIR.match(value, pos)
        if match is not None:
            if match.group(1).lower() == b"for":
                if node is not None:
                    return [""]  # two for= in one element: which one is the hop?
                raw = match.group(2)
                if raw.startswith(b'"'):
                    raw = _UNESCAPE.sub(rb"\1", raw[1:-1])
                node = raw.decode("latin-1")
            pos = match.end()
            if pos >= end:
                break
        separator = value[pos]
        if separator == 0x3B:  # ";": another pair of the same element
            pos += 1
        elif separator == 0x2C:  # ",": the element ends
            hops.append(node or "")
            node, open_element = None, False
            pos = _skip_separators(value, pos)
        else:
            return [""]
    if open_element:
        hops.append(node or "")
    return hops


def _skip_separators(value: bytes, pos: int) -> int:
    """Past commas and whitespace: empty list elements are allowed (RFC 9110 section 5.6.1)."""
    end = len(value)
    while pos < end and value[pos] in b" \t,":
        pos += 1
    return pos


def _hop_address(hop: str, rfc7239: bool) -> str | None:
    """A hop's address in canonical form; None for anything else (unknown, obfuscated, garbage).

    Accepted: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`
    and, in X-Forwarded-For only, `2001:db8::1`. An unbracketed IPv6 address
    takes no port, since `2001:db8::1:4711` is itself an IPv6 address; RFC 7239
    requires the brackets, so a Forwarded node without them is malformed.
    """
    if "%" in hop:
        return None  # a zone id names an interface of the proxy, meaningless here
    if hop.startswith("["):
        inner, sep, rest = hop[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
        address = parse_address(inner)
        return str(address) if address is not None and ":" in inner else None
    colons = hop.count(":")
    if colons > 1 and rfc7239:
        return None
    if colons == 1:
        hop, _, port = hop.partition(":")
        if not _PORT.fullmatch(port):
            return None
    address = parse_address(hop)
    return str(address) if address is not None else None
