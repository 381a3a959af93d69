"""Address sets, the real client behind trusted proxies, and token buckets: the pure parts of access policy."""

from __future__ import annotations

import math
import resource
import tomllib

import pytest

from ingress.config.loader import parse_config
from ingress.errors import ConfigError
from ingress.policy.network import AddressSet, forwarded_client, parse_cidr
from ingress.policy.ratelimit import TokenBuckets

# --------------------------------------------------------------------------- AddressSet


def test_ipv4_networks_and_bare_addresses() -> None:
    nets = AddressSet(["10.0.0.0/8", "192.168.1.7", "172.16.0.0/12"])
    assert "10.255.1.2" in nets
    assert "192.168.1.7" in nets
    assert "192.168.1.8" not in nets
    assert "172.31.255.255" in nets
    assert "172.32.0.0" not in nets
    assert "11.0.0.1" not in nets


def test_ipv6_networks() -> None:
    nets = AddressSet(["2001:db8::/32", "::1"])
    assert "2001:db8:ffff::1" in nets
    assert "2001:DB8::1" in nets  # any spelling of the same address
    assert "2001:db9::1" not in nets
    assert "::1" in nets
    assert "::2" not in nets
    assert "10.0.0.1" not in nets  # another family never matches


def test_ipv4_mapped_addresses_are_ipv4() -> None:
    nets = AddressSet(["10.0.0.0/8"])
    assert "::ffff:10.0.0.1" in nets
    assert "::ffff:a00:1" in nets
    assert "::ffff:11.0.0.1" not in nets
    # A mapped network in config is the IPv4 network it names.
    mapped = AddressSet(["::ffff:192.168.0.0/112"])
    assert "192.168.4.4" in mapped
    assert "::ffff:192.168.4.4" in mapped


def test_zone_ids_are_stripped_from_lookups() -> None:
    nets = AddressSet(["fe80::/10"])
    assert "fe80::1%eth0" in nets
    assert "fe80::1%1" in nets


def test_unparsable_addresses_are_not_members() -> None:
    nets = AddressSet(["0.0.0.0/0", "::/0"])
    for junk in ("", "unknown", "_hidden", "10.0.0", "1.2.3.4.5", "[::1]", "01.2.3.4", "x" * 500, "1.2.3.4:80"):
        assert junk not in nets, junk
    assert "1.2.3.4" in nets and "::" in nets


def test_empty_set_is_falsy_and_answers_without_work() -> None:
    empty = AddressSet([])
    assert not empty
    assert "10.0.0.1" not in empty
    assert not empty._memo  # nothing parsed, nothing remembered
    assert AddressSet(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("cidr", "fragment"),
    [
        ("10.0.0.1/8", "host bits set; write the network 10.0.0.0/8"),
        ("2001:db8::1/32", "host bits set; write the network 2001:db8::/32"),
        ("10.0.0.0/33", "not an IP address or CIDR"),
        ("example.com", "not an IP address or CIDR"),
        ("fe80::1%eth0", "zone id"),
        ("", "not an IP address or CIDR"),
    ],
)
def test_bad_cidrs_are_refused_with_the_fix(cidr: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        AddressSet([cidr])
    assert fragment in str(info.value)
    assert repr(cidr) in str(info.value)


def test_parse_cidr_normalises() -> None:
    assert str(parse_cidr(" 10.0.0.0/8 ")) == "10.0.0.0/8"
    assert str(parse_cidr("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    assert str(parse_cidr("2001:db8::1")) == "2001:db8::1/128"


def test_memo_stays_bounded() -> None:
    nets = AddressSet(["10.0.0.0/8"], memo_size=64)
    for i in range(10_000):
        assert (f"10.0.{i // 256}.{i % 256}" in nets) is True
        assert len(nets._memo) <= 64
    assert f"11.0.0.{1}" not in nets
    assert len(nets._memo) <= 64


def test_memo_answers_repeated_addresses() -> None:
    nets = AddressSet(["10.0.0.0/8"])
    assert "10.1.1.1" in nets
    assert nets._memo == {"10.1.1.1": True}
    nets._memo["10.1.1.1"] = False  # prove the second answer comes from the memo
    assert "10.1.1.1" not in nets


def test_long_garbage_is_not_memoised() -> None:
    nets = AddressSet(["10.0.0.0/8"])
    assert "9" * 1000 not in nets
    assert not nets._memo


def test_many_networks_of_many_lengths() -> None:
    cidrs = [f"10.{i}.0.0/16" for i in range(200)] + [f"2001:db8:{i:x}::/48" for i in range(200)]
    nets = AddressSet(cidrs)
    assert "10.199.3.4" in nets and "10.200.3.4" not in nets
    assert "2001:db8:c7::9" in nets and "2001:db8:c8::9" not in nets


# --------------------------------------------------------------------------- forwarded_client

PROXIES = AddressSet(["10.0.0.0/8", "2001:db8:ffff::/48"])


def client(peer: str, **headers: str) -> str:
    fields = {name.replace("_", "-").encode(): value.encode("latin-1") for name, value in headers.items()}
    return forwarded_client(peer, fields, PROXIES)


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert client("203.0.113.9", x_forwarded_for="198.51.100.1") == "203.0.113.9"
    assert client("203.0.113.9", forwarded="for=198.51.100.1") == "203.0.113.9"
    assert client("203.0.113.9") == "203.0.113.9"


def test_trusted_peer_without_headers_is_the_client() -> None:
    assert client("10.0.0.5") == "10.0.0.5"


def test_trusted_peer_names_the_client() -> None:
    assert client("10.0.0.5", x_forwarded_for="198.51.100.1") == "198.51.100.1"
    assert client("10.0.0.5", forwarded="for=198.51.100.1") == "198.51.100.1"


def test_multi_hop_skips_our_proxies_and_ignores_what_the_client_wrote() -> None:
    # The client itself sent "6.6.6.6" (a spoof); our two proxies appended the real address and each other.
    assert client("10.0.0.5", x_forwarded_for="6.6.6.6, 198.51.100.1, 10.0.0.9") == "198.51.100.1"
    assert client("10.0.0.5", x_forwarded_for="6.6.6.6,198.51.100.1,10.0.0.9,10.1.1.1") == "198.51.100.1"


def test_every_hop_trusted_gives_the_leftmost() -> None:
    assert client("10.0.0.5", x_forwarded_for="10.0.0.1, 10.0.0.2") == "10.0.0.1"


def test_malformed_hop_stops_at_the_last_trusted_hop() -> None:
    assert client("10.0.0.5", x_forwarded_for="198.51.100.1, garbage") == "10.0.0.5"
    assert client("10.0.0.5", x_forwarded_for="198.51.100.1, garbage, 10.0.0.7") == "10.0.0.7"
    assert client("10.0.0.5", x_forwarded_for="198.51.100.1, , 10.0.0.7") == "10.0.0.7"
    assert client("10.0.0.5", x_forwarded_for="") == "10.0.0.5"


def test_xff_ports_and_brackets() -> None:
    assert client("10.0.0.5", x_forwarded_for="198.51.100.1:4711") == "198.51.100.1"
    assert client("10.0.0.5", x_forwarded_for="[2001:db8::1]:4711") == "2001:db8::1"
    assert client("10.0.0.5", x_forwarded_for="2001:db8::1") == "2001:db8::1"
    assert client("10.0.0.5", x_forwarded_for="198.51.100.1:http") == "10.0.0.5"


def test_answers_are_canonical() -> None:
    assert client("10.0.0.5", x_forwarded_for="2001:DB8:0::1") == "2001:db8::1"
    assert client("10.0.0.5", x_forwarded_for="::ffff:198.51.100.1") == "198.51.100.1"
    assert client("::ffff:10.0.0.5", x_forwarded_for="198.51.100.1") == "198.51.100.1"


def test_forwarded_quoting_ipv6_and_ports() -> None:
    assert client("10.0.0.5", forwarded='for="[2001:db8:cafe::17]:4711"') == "2001:db8:cafe::17"
    assert client("10.0.0.5", forwarded='for="[2001:db8:cafe::17]"') == "2001:db8:cafe::17"
    assert client("10.0.0.5", forwarded='for="198.51.100.1:4711"') == "198.51.100.1"
    assert client("10.0.0.5", forwarded='for="198.51.100.1:_port"') == "198.51.100.1"
    assert client("10.0.0.5", forwarded='for="\\198.51.100.1"') == "198.51.100.1"  # quoted-pair


def test_forwarded_parameters_and_case() -> None:
    value = "proto=https;For=198.51.100.1;by=10.0.0.5;host=example.com"
    assert client("10.0.0.5", forwarded=value) == "198.51.100.1"
    assert client("10.0.0.5", forwarded="FOR=198.51.100.1 ; proto=http") == "198.51.100.1"


def test_forwarded_multi_hop_and_repeated_headers() -> None:
    # Repeated Forwarded fields reach us joined with ", ".
    value = 'for=6.6.6.6, for=198.51.100.1;proto=https, for="[2001:db8:ffff::2]"'
    assert client("10.0.0.5", forwarded=value) == "198.51.100.1"


def test_forwarded_wins_over_x_forwarded_for() -> None:
    assert client("10.0.0.5", forwarded="for=198.51.100.1", x_forwarded_for="198.51.100.2") == "198.51.100.1"


def test_forwarded_unknown_and_obfuscated_stop_the_walk() -> None:
    assert client("10.0.0.5", forwarded="for=unknown") == "10.0.0.5"
    assert client("10.0.0.5", forwarded="for=_hidden, for=10.0.0.8") == "10.0.0.8"
    assert client("10.0.0.5", forwarded="for=198.51.100.1, for=unknown") == "10.0.0.5"
    assert client("10.0.0.5", forwarded="proto=https") == "10.0.0.5"  # an element without for=


def test_forwarded_malformed_is_not_believed() -> None:
    for value in (
        "for=198.51.100.1 garbage",
        'for="198.51.100.1',
        "for=198.51.100.1;for=198.51.100.2",
        "for=2001:db8::1",  # IPv6 must be quoted and bracketed
        'for="2001:db8::1"',  # and bracketed even when quoted: a port would be ambiguous
        'for="[2001:db8::1"',
        'for="[198.51.100.1]"',
        'for="[fe80::1%eth0]"',
        "=x",
    ):
        assert client("10.0.0.5", forwarded=value) == "10.0.0.5", value


def test_forwarded_empty_elements_are_skipped() -> None:
    assert client("10.0.0.5", forwarded=", for=198.51.100.1 ,") == "198.51.100.1"


def test_hop_cap_bounds_the_walk() -> None:
    trusted_chain = ", ".join(f"10.0.{i // 256}.{i % 256}" for i in range(100))
    # 198.51.100.1 is beyond the 32 hops considered: the leftmost considered hop is the answer.
    answer = client("10.0.0.5", x_forwarded_for="198.51.100.1, " + trusted_chain)
    assert answer == "10.0.0.68"
    assert forwarded_client("10.0.0.5", {b"x-forwarded-for": b"198.51.100.1, 10.0.0.1"}, PROXIES, 1) == "10.0.0.1"
    fwd = ", ".join(f"for=10.0.0.{i}" for i in range(1, 101))
    assert client("10.0.0.5", forwarded="for=198.51.100.1, " + fwd) == "10.0.0.69"


def test_huge_header_is_cheap() -> None:
    value = "1.1.1.1," * 20_000 + "198.51.100.1"
    assert client("10.0.0.5", x_forwarded_for=value) == "198.51.100.1"


# --------------------------------------------------------------------------- TokenBuckets


def test_burst_then_exhaustion() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=100)
    assert [buckets.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("a", 100.0)
    assert wait == pytest.approx(0.5)
    assert buckets.take("b", 100.0) == 0.0  # another key has its own bucket


def test_refill_with_a_fake_clock() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=100)
    now = 50.0
    assert buckets.take("a", now) == 0.0
    assert buckets.take("a", now) == 0.0
    assert buckets.take("a", now) == pytest.approx(1.0)
    assert buckets.take("a", now + 0.25) == pytest.approx(0.75)  # refused takes do not consume
    assert buckets.take("a", now + 1.0) == 0.0
    assert buckets.take("a", now + 1.0) == pytest.approx(1.0)
    # Refill stops at the burst.
    assert [buckets.take("a", now + 1000.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_retry_after_is_the_ceiling_of_the_wait() -> None:
    buckets = TokenBuckets(rate=0.1, burst=1, max_keys=10)
    assert buckets.take("a", 0.0) == 0.0
    wait = buckets.take("a", 2.5)
    assert wait == pytest.approx(7.5)
    assert math.ceil(wait) == 8
    assert buckets.take("a", 10.0) == 0.0


def test_clock_going_backwards_is_harmless() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=10)
    assert buckets.take("a", 10.0) == 0.0
    assert buckets.take("a", 5.0) == pytest.approx(1.0)
    assert buckets.take("a", 11.0) == 0.0


def test_least_recently_used_key_is_evicted() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=2)
    buckets.take("a", 0.0)
    buckets.take("b", 0.0)
    buckets.take("a", 0.0)  # refused, but a is now the most recent
    buckets.take("c", 0.0)  # evicts b
    assert len(buckets) == 2
    assert buckets.evicted == 1
    assert buckets.early_evictions == 1  # b had spent its token
    assert buckets.take("a", 0.0) > 0  # a kept its (empty) bucket
    assert buckets.take("b", 0.0) == 0.0  # b came back full: the permissive direction
    assert buckets.early_evictions == 2  # c was evicted with its token spent


def test_evicting_a_refilled_bucket_is_not_early() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=1)
    buckets.take("a", 0.0)
    buckets.take("b", 5.0)  # a refilled long ago
    assert (buckets.evicted, buckets.early_evictions) == (1, 0)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1, max_keys=10)
    with pytest.raises(ValueError):
        TokenBuckets(rate=1, burst=0, max_keys=10)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_is_bounded_under_a_million_distinct_keys() -> None:
    buckets = TokenBuckets(rate=1.0, burst=5, max_keys=1000)
    before = _rss_kib()
    take = buckets.take
    for i in range(1_000_000):
        take(str(i), 0.0)
        if i % 100_000 == 0:
            assert len(buckets) <= 1000
    assert len(buckets) == 1000
    assert buckets.evicted == 1_000_000 - 1000
    grown = _rss_kib() - before
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


# --------------------------------------------------------------------------- config semantics

LISTENER = '[[listeners]]\nname = "edge"\naddress = "127.0.0.1:0"\n'
TLS = '[listeners.tls]\ncerts = [{ cert = "c.pem", key = "k.pem" }]\n'


def problems(text: str) -> list[str]:
    try:
        parse_config(tomllib.loads(text), "t.toml")
    except ConfigError as exc:
        return [f"{p.path}: {p.message}" for p in exc.problems]
    return []


def test_proxy_protocol_needs_proxy_from() -> None:
    found = problems(LISTENER + 'proxy_protocol = "v2"\n')
    assert any(p.startswith("listeners[0].proxy_from: ") and "add proxy_from" in p for p in found), found


def test_proxy_from_without_proxy_protocol() -> None:
    found = problems(LISTENER + 'proxy_from = ["10.0.0.0/8"]\n')
    assert any(p.startswith("listeners[0].proxy_from: ") and 'proxy_protocol is "off"' in p for p in found), found


def test_proxy_from_cidrs_are_checked() -> None:
    found = problems(LISTENER + 'proxy_protocol = "v1"\nproxy_from = ["10.0.0.1/8", "nonsense"]\n')
    assert any(p.startswith("listeners[0].proxy_from[0]: ") and "10.0.0.0/8" in p for p in found), found
    assert any(p.startswith("listeners[0].proxy_from[1]: ") for p in found), found


def test_tls_proxy_listener_must_not_serve_quic() -> None:
    text = LISTENER + 'proxy_protocol = "any"\nproxy_from = ["10.0.0.0/8"]\n' + TLS
    found = problems(text)
    assert any(p.startswith("listeners[0].quic.enabled: ") and "quic.enabled = false" in p for p in found), found
    assert not [p for p in problems(text + "[listeners.quic]\nenabled = false\n") if "proxy" in p or "quic" in p]


def test_policy_cidrs_are_checked() -> None:
    text = (
        LISTENER
        + '[policy.network]\nallow = ["10.0.0.0/8", "bad"]\ndeny = ["::1/129"]\ntrusted_proxies = ["10.1.1.1/16"]\n'
        + '[[policy.rules]]\nname = "r"\nallow = ["x"]\ndeny = ["192.168.0.1/24"]\n'
    )
    found = problems(text)
    for key in (
        "policy.network.allow[1]",
        "policy.network.deny[0]",
        "policy.network.trusted_proxies[0]",
        "policy.rules[0].allow[0]",
        "policy.rules[0].deny[0]",
    ):
        assert any(p.startswith(key + ": ") for p in found), (key, found)
