"""CIDRs as config writes them, shared by config checks and the address sets built from them."""

from __future__ import annotations

import ipaddress

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One network from config: `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).

    Host bits set (`10.0.0.1/8`) are refused rather than masked away: the
    operator meant either the one host or the whole network, and guessing
    wrong silently widens or narrows who is let in. IPv4-mapped IPv6
    networks (`::ffff:10.0.0.0/104`) become the IPv4 network they name,
    because lookups treat mapped addresses as IPv4 too. Zone ids are
    refused: they name an interface, which is no part of an address rule.
    """
    text = text.strip()
    if "%" in text:
        raise ValueError(f"{text!r} has a zone id (%...); address rules name addresses, not interfaces")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            masked = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32): {exc}") from None
        raise ValueError(f"{text!r} has host bits set; write the network {masked} or the single address") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network
