"""The pure parts of the reverse proxy: origin choice, origin health and the header rules of each hop.

No sockets: balancers and health are driven with explicit `now` values,
the active checker with a fake probe on a real (short-lived) event loop,
and header rules with Requests built in-process.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable

import pytest

from ingress.config.telemetry import Tracing
from ingress.config.upstream import HealthCheck, OutlierDetection, ProxySettings, Upstream
from ingress.handlers.proxy.balancer import (
    ConsistentHash,
    LeastRequests,
    RoundRobin,
    build_balancer,
    compile_key,
    hash_key,
)
from ingress.handlers.proxy.headers import (
    HeaderRules,
    Outgoing,
    declared_length,
    dn_value,
    request_framing,
    response_headers,
    text_value,
)
from ingress.handlers.proxy.health import MAX_EJECTION_MULTIPLIER, ActiveChecker, PoolHealth
from ingress.policy.network import AddressSet
from ingress.protocol.events import Decision, Peer, Request
from ingress.protocol.pipe import Pipe
from ingress.protocol.trace import TraceContext
from ingress.telemetry.context import Tracer, new_span_id, parse_traceparent
from ingress.telemetry.ids import ENTROPY
from ingress.tls.identity import ClientIdentity

NONE: frozenset[int] = frozenset()


def request(
    headers: dict[bytes, bytes] | None = None,
    *,
    client: str = "192.0.2.10",
    host: str = "bank.example",
    version: str = "1.1",
    scheme: str = "https",
    method: str = "GET",
    identity: ClientIdentity | None = None,
    decision: Decision | None = None,
    body: bytes | Pipe = b"",
) -> Request:
    fields = {b"host": host.encode()} if headers is None else headers
    req = Request(method, b"/", b"", fields, host, version, True, scheme, body)
    req.peer = Peer(client=client, identity=identity)
    req.decision = decision
    return req


# --------------------------------------------------------------------------- balancers


def test_round_robin_takes_origins_in_turn() -> None:
    rr = RoundRobin(4)
    picks = Counter(rr.pick(None, NONE, ()) for _ in range(4000))
    assert picks == {0: 1000, 1: 1000, 2: 1000, 3: 1000}
    assert [rr.pick(None, NONE, ()) for _ in range(5)] == [0, 1, 2, 3, 0]


def test_round_robin_shares_a_skipped_origins_load_evenly() -> None:
    rr = RoundRobin(4)
    picks = Counter(rr.pick(None, {1}, ()) for _ in range(3000))
    assert picks == {0: 1000, 2: 1000, 3: 1000}
    assert rr.pick(None, {0, 1, 2, 3}, ()) is None


def test_least_requests_picks_the_least_loaded_usable_origin() -> None:
    lr = LeastRequests(4)
    assert lr.pick(None, NONE, [5, 2, 7, 3]) == 1
    assert lr.pick(None, {1}, [5, 2, 7, 3]) == 3  # the least loaded is skipped (tried or ejected)
    assert lr.pick(None, {0, 1, 2, 3}, [0, 0, 0, 0]) is None


def test_least_requests_breaks_ties_in_turn() -> None:
    lr = LeastRequests(3)
    assert Counter(lr.pick(None, NONE, [0, 0, 0]) for _ in range(300)) == {0: 100, 1: 100, 2: 100}
    tied = Counter(lr.pick(None, NONE, [1, 4, 1]) for _ in range(300))
    assert set(tied) == {0, 2} and abs(tied[0] - tied[2]) <= 100


def _owners(ring: ConsistentHash, keys: list[bytes], skip: frozenset[int] | set[int] = NONE) -> list[int | None]:
    return [ring.pick(key, skip, ()) for key in keys]


KEYS = [b"client-%d" % i for i in range(10_000)]
NAMES = [f"http://10.0.0.{i}:8080" for i in range(10)]


def test_consistent_hash_spreads_keys_roughly_evenly() -> None:
    ring = ConsistentHash(NAMES, compile_key("client_ip"))
    shares = Counter(_owners(ring, KEYS))
    assert set(shares) == set(range(10))
    assert all(600 <= count <= 1500 for count in shares.values()), shares


def test_consistent_hash_moves_only_the_removed_origins_keys() -> None:
    before = _owners(ConsistentHash(NAMES, compile_key("client_ip")), KEYS)
    gone = NAMES[3]
    remaining = [name for name in NAMES if name != gone]
    after_ring = ConsistentHash(remaining, compile_key("client_ip"))
    after = [remaining[i] if i is not None else None for i in _owners(after_ring, KEYS)]
    named_before = [NAMES[i] if i is not None else None for i in before]
    moved = [key for key, old, new in zip(KEYS, named_before, after, strict=True) if old != new]
    # Only the keys the removed origin owned move: about 1/N of them, and nobody else's.
    assert 0.05 < len(moved) / len(KEYS) < 0.15
    assert all(named_before[KEYS.index(key)] == gone for key in moved)


def test_consistent_hash_walks_past_unusable_origins_and_comes_back() -> None:
    ring = ConsistentHash(NAMES, compile_key("client_ip"))
    before = _owners(ring, KEYS)
    during = _owners(ring, KEYS, {3})
    moved = [i for i, (old, new) in enumerate(zip(before, during, strict=True)) if old != new]
    assert all(before[i] == 3 for i in moved)
    assert len(moved) == before.count(3)
    assert 3 not in during
    # The moved keys spread over the others rather than all landing on one neighbour.
    assert len({during[i] for i in moved}) >= 5
    assert _owners(ring, KEYS) == before  # readmitted: its keys come back
    # Retries: the tried origin and the unusable one are both skipped.
    key = KEYS[0]
    first = ring.pick(key, NONE, ())
    assert first is not None
    second = ring.pick(key, {first}, ())
    assert second not in (None, first)
    assert ring.pick(key, set(range(10)), ()) is None


def test_consistent_hash_without_a_key_falls_back_to_round_robin() -> None:
    ring = ConsistentHash(NAMES[:3], compile_key("cookie:sid"))
    assert [ring.pick(None, NONE, ()) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_consistent_hash_is_stable_across_instances_and_order() -> None:
    a = ConsistentHash(NAMES, compile_key("client_ip"))
    b = ConsistentHash(list(reversed(NAMES)), compile_key("client_ip"))
    for key in KEYS[:500]:
        i, j = a.pick(key, NONE, ()), b.pick(key, NONE, ())
        assert i is not None and j is not None
        assert NAMES[i] == list(reversed(NAMES))[j]


def test_hash_keys() -> None:
    req = request(
        {
            b"x-tenant": b"acme",
            b"cookie": b'xsid=wrong; sid="abc"; other=1; sid=second',
            b"empty": b"",
        },
        client="2001:db8::7",
    )
    assert hash_key("client_ip", req) == b"2001:db8::7"
    assert hash_key("header:X-Tenant", req) == b"acme"
    assert hash_key("header:empty", req) is None
    assert hash_key("header:missing", req) is None
    assert hash_key("cookie:sid", req) == b"abc"  # the first, unquoted; `xsid` is another cookie
    assert hash_key("cookie:other", req) == b"1"
    assert hash_key("cookie:SID", req) is None  # cookie names are case-sensitive
    assert hash_key("cookie:nope", req) is None
    assert hash_key("cookie:sid", request({b"cookie": b"sid="})) is None
    assert hash_key("cookie:sid", request({})) is None
    assert hash_key("client_ip", request(client="")) is None
    for bad in ("ip", "header:", "cookie", "client_ip:x"):
        with pytest.raises(ValueError, match="hash_on"):
            compile_key(bad)


def test_build_balancer() -> None:
    origins = ("http://10.0.0.1:80", "http://10.0.0.2:80")
    assert isinstance(build_balancer(Upstream("a", origins)), RoundRobin)
    assert isinstance(build_balancer(Upstream("a", origins, balance="least_requests")), LeastRequests)
    ring = build_balancer(Upstream("a", origins, balance="hash", hash_on="header:x-user"), 2)
    assert isinstance(ring, ConsistentHash) and ring.key_of is not None
    assert ring.key_of(request({b"x-user": b"u1"})) == b"u1"
    assert build_balancer(Upstream("a", origins)).key_of is None
    with pytest.raises(ValueError):
        build_balancer(Upstream("a", ()))


# --------------------------------------------------------------------------- health

NAMES4 = ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80", "http://10.0.0.4:80"]


def test_active_thresholds() -> None:
    pool = PoolHealth("api", NAMES4, OutlierDetection(), HealthCheck(healthy_threshold=2, unhealthy_threshold=3))
    assert pool.healthy == 4 and not pool.unusable(0.0)  # origins start healthy
    assert not pool.record_probe(0, False, 1.0)
    assert not pool.record_probe(0, False, 2.0)
    assert not pool.record_probe(0, True, 3.0)  # a pass breaks the run
    assert not pool.record_probe(0, False, 4.0)
    assert not pool.record_probe(0, False, 5.0)
    assert pool.record_probe(0, False, 6.0)
    assert not pool.usable(0, 6.0) and pool.healthy == 3
    assert not pool.record_probe(0, True, 7.0)
    assert not pool.usable(0, 7.0)
    assert pool.record_probe(0, True, 8.0)
    assert pool.usable(0, 8.0) and pool.healthy == 4


def test_consecutive_5xx_eject_until_the_ejection_time_is_over() -> None:
    pool = PoolHealth("api", NAMES4, OutlierDetection(consecutive_5xx=3, ejection_time=30.0))
    for status in (500, 502, 200, 503, 504):  # a good answer resets the run
        assert not pool.record_response(1, status, 10.0)
    assert pool.record_response(1, 500, 10.0)
    assert pool.unusable(10.0) == {1} and pool.ejected == 1
    assert not pool.record_response(1, 500, 11.0)  # already out
    assert not pool.usable(1, 39.9)
    assert pool.usable(1, 40.0)
    assert pool.ejected == 0 and pool.ejections_total == [0, 1, 0, 0]
    # Readmitted with a clean slate: one more 5xx is not enough.
    assert not pool.record_response(1, 500, 41.0)
    assert pool.usable(1, 41.0)


def test_connect_failures_eject_and_any_answer_resets_them() -> None:
    pool = PoolHealth("api", NAMES4, OutlierDetection(consecutive_failures=2, consecutive_5xx=0))
    assert not pool.record_failure(2, 1.0)
    assert not pool.record_response(2, 503, 1.0)  # 5xx counting is off, but the answer ends the failures
    assert not pool.record_failure(2, 2.0)
    assert pool.record_failure(2, 3.0)
    assert not pool.usable(2, 3.0)
    for _ in range(50):
        assert not pool.record_response(3, 500, 4.0)  # consecutive_5xx = 0: never ejects


def test_repeated_ejections_last_longer_up_to_a_cap() -> None:
    pool = PoolHealth("api", NAMES4, OutlierDetection(consecutive_failures=1, ejection_time=10.0))
    now = 0.0
    lengths = []
    for _ in range(MAX_EJECTION_MULTIPLIER + 2):
        assert pool.record_failure(0, now)
        until = pool.origins[0].ejected_until
        lengths.append(until - now)
        now = until
        assert pool.usable(0, now)
    assert lengths[:3] == [10.0, 20.0, 30.0]
    assert lengths[-1] == 10.0 * MAX_EJECTION_MULTIPLIER
    # An origin that stayed in for the longest ejection starts again from one.
    now += 10.0 * MAX_EJECTION_MULTIPLIER
    assert pool.record_failure(0, now)
    assert pool.origins[0].ejected_until - now == 10.0


def test_max_ejected_percent_keeps_the_pool_serving() -> None:
    pool = PoolHealth("api", NAMES4, OutlierDetection(consecutive_failures=1, max_ejected_percent=50, ejection_time=5))
    assert pool.record_failure(0, 0.0)
    assert pool.record_failure(1, 0.0)
    assert not pool.record_failure(2, 0.0)  # would be 3 of 4
    assert pool.ejections_refused == 1 and pool.unusable(0.0) == {0, 1}
    assert pool.record_failure(2, 5.0)  # the first two are back: room again
    assert pool.unusable(5.0) == {2}
    lone = PoolHealth("one", NAMES4[:1], OutlierDetection(consecutive_failures=1))
    assert not lone.record_failure(0, 0.0)  # 50% of one origin is none
    assert lone.usable(0, 0.0)
    assert not PoolHealth("z", NAMES4, OutlierDetection(consecutive_failures=1, max_ejected_percent=0)).eject(0, 0.0)


def test_unhealthy_and_ejected_are_independent() -> None:
    pool = PoolHealth("api", NAMES4, OutlierDetection(consecutive_failures=1), HealthCheck(unhealthy_threshold=1))
    assert pool.record_failure(0, 0.0)
    assert pool.record_probe(0, False, 1.0)
    assert pool.unusable(100.0) == {0}  # the ejection is over, but it is still unhealthy
    assert pool.record_probe(0, True, 101.0) is False  # healthy_threshold defaults to 2
    assert pool.record_probe(0, True, 102.0)
    assert not pool.unusable(102.0)


def test_transitions_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeward.upstream")
    pool = PoolHealth("api", NAMES4, OutlierDetection(consecutive_5xx=2), HealthCheck(unhealthy_threshold=1))
    for _ in range(10):
        pool.record_response(0, 500, 1.0)
        pool.record_probe(1, False, 1.0)
    pool.unusable(100.0)
    events = [getattr(record, "event", None) for record in caplog.records]
    assert events == ["upstream.unhealthy", "upstream.ejected", "upstream.readmitted"]
    ejected = caplog.records[1]
    assert getattr(ejected, "upstream", None) == "api" and getattr(ejected, "origin", None) == NAMES4[0]


def test_active_checker_probes_on_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeward.upstream")
    config = HealthCheck(path="/health", interval=0.1, timeout=0.05, healthy_threshold=2, unhealthy_threshold=2)
    pool = PoolHealth("api", NAMES4, OutlierDetection(), config)
    calls: Counter[int] = Counter()
    answers: dict[int, Callable[[], int]] = {}

    def boom() -> int:
        raise ConnectionResetError

    answers[0] = lambda: 200
    answers[1] = boom
    answers[3] = lambda: 500

    async def probe(i: int) -> int:
        calls[i] += 1
        if i == 2:
            await asyncio.sleep(10)  # never answers: the timeout fails it
        return answers[i]()

    async def main() -> None:
        checker = ActiveChecker(asyncio.get_running_loop(), config, pool, probe)
        checker.start()
        checker.start()  # idempotent
        await asyncio.sleep(0.45)
        assert pool.unusable(0.0) == {1, 2, 3}
        answers[1] = lambda: 204
        await asyncio.sleep(0.4)
        assert pool.unusable(0.0) == {2, 3}
        checker.stop()
        await checker.wait_stopped()
        assert not checker.running
        seen = sum(calls.values())
        await asyncio.sleep(0.15)
        assert sum(calls.values()) == seen  # no probes after stop

    asyncio.run(main())
    # One probe per origin per interval (a jittered first one within the first interval): ~8 in 0.85 s.
    assert all(4 <= calls[i] <= 10 for i in range(4)), calls
    events = [getattr(record, "event", None) for record in caplog.records]
    assert sorted(map(str, events)) == ["upstream.healthy"] + ["upstream.unhealthy"] * 3


def test_active_checker_without_a_path_is_off() -> None:
    async def probe(i: int) -> int:
        raise AssertionError("no probe expected")

    async def main() -> None:
        pool = PoolHealth("api", NAMES4, OutlierDetection())
        checker = ActiveChecker(asyncio.get_running_loop(), HealthCheck(), pool, probe)
        checker.start()
        assert not checker.running
        checker.stop()
        await checker.wait_stopped()

    asyncio.run(main())


# --------------------------------------------------------------------------- request headers

TRUSTED = AddressSet(["10.0.0.0/8", "2001:db8:ffff::/48"])
RULES = HeaderRules(ProxySettings(), TRUSTED)
CERT = ClientIdentity("CN=payments,O=Bank", "CN=ca", "1", "ab" * 32)
HEX32 = re.compile(rb"[0-9a-f]{32}")
VALID_TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


RolesDecision = Decision  # the gate records the roles it granted on the Decision


def fields_of(block: bytes) -> list[tuple[bytes, bytes]]:
    """The `name: value` lines of a serialised field block, each checked to be one whole line."""
    assert block.endswith(b"\r\n"), block
    pairs = []
    for line in block[:-2].split(b"\r\n"):
        name, sep, value = line.partition(b": ")
        assert sep and name and b"\n" not in line and b"\r" not in line, line
        pairs.append((name, value))
    return pairs


def as_dict(fields: bytes | list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    if isinstance(fields, bytes):
        fields = fields_of(fields)
    names = [name for name, _ in fields]
    assert len(names) == len(set(names)), f"repeated fields in {names}"
    return dict(fields)


def test_spoofed_identity_headers_are_replaced_by_verified_facts() -> None:
    spoof = {
        b"host": b"bank.example",
        b"x-client-cert-subject": b"CN=admin",
        b"x-client-cert-fingerprint": b"00" * 32,
        b"x-auth-subject": b"root",
        b"x-auth-roles": b"admin",
        b"accept": b"*/*",
    }
    anonymous = as_dict(RULES.request_headers(request(dict(spoof))).fields)
    for name in (b"x-client-cert-subject", b"x-client-cert-fingerprint", b"x-auth-subject", b"x-auth-roles"):
        assert name not in anonymous
    assert anonymous[b"accept"] == b"*/*"

    decision = RolesDecision("allowed", "granted", "api", "alice", roles=("teller", "auditor"))
    fields = as_dict(RULES.request_headers(request(dict(spoof), identity=CERT, decision=decision)).fields)
    assert fields[b"x-client-cert-subject"] == b"CN=payments,O=Bank"
    assert fields[b"x-client-cert-fingerprint"] == b"ab" * 32
    assert fields[b"x-auth-subject"] == b"alice"
    assert fields[b"x-auth-roles"] == b"teller,auditor"

    # Names from config are matched whatever their case; a refused decision asserts nothing.
    custom = HeaderRules(ProxySettings(auth_subject_header="X-USER"), TRUSTED)
    refused = Decision("denied_rbac", "missing role", "api", "mallory")
    fields = as_dict(custom.request_headers(request({b"x-user": b"root"}, decision=refused)).fields)
    assert b"x-user" not in fields


def test_underscore_names_never_reach_the_origin() -> None:
    """CGI, WSGI and PHP read X_Auth_Subject as X-Auth-Subject: such names are dropped, as nginx does."""
    spoof = {b"host": b"bank.example", b"x_auth_subject": b"root", b"x_client_cert_subject": b"CN=admin", b"a": b"1"}
    fields = as_dict(RULES.request_headers(request(spoof)).fields)
    assert not any(b"_" in name for name in fields)
    assert fields[b"a"] == b"1"


def test_identity_values_cannot_break_the_head() -> None:
    evil = ClientIdentity("CN=a\r\nX-Auth-Subject: root,O=\x00Bänk", "CN=ca", "1", "cd" * 32)
    decision = RolesDecision("allowed", "granted", "api", "bob\r\nx-admin: 1", roles=("a,b", "c\nd", "100%"))
    out = fields_of(RULES.request_headers(request(identity=evil, decision=decision)).fields)
    for name, value in out:
        assert not re.search(rb"[\x00-\x1f\x7f]", name + value), (name, value)
    fields = as_dict(out)
    assert fields[b"x-client-cert-subject"] == b"CN=a\\0D\\0AX-Auth-Subject: root,O=\\00B\\C3\\A4nk"
    assert fields[b"x-auth-subject"] == b"bob%0D%0Ax-admin:%201"
    assert fields[b"x-auth-roles"] == b"a%2Cb,c%0Ad,100%25"
    # One-to-one: a literal escape sequence does not collide with what it would encode.
    assert text_value("a%0Ab") != text_value("a\nb")
    assert dn_value("CN=plain") == b"CN=plain"


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    fields = as_dict(
        RULES.request_headers(
            request(
                {
                    b"host": b"bank.example",
                    b"connection": b"keep-alive, X-Secret , foo",
                    b"keep-alive": b"timeout=5",
                    b"x-secret": b"hop",
                    b"foo": b"bar",
                    b"te": b"trailers",
                    b"trailer": b"x-checksum",
                    b"upgrade": b"h2c",
                    b"proxy-authorization": b"Basic eA==",
                    b"proxy-connection": b"keep-alive",
                    b"transfer-encoding": b"chunked",
                    b"content-length": b"5",
                    b"expect": b"100-continue",
                    b"authorization": b"Bearer t",
                    b"cookie": b"a=1",
                }
            )
        ).fields
    )
    for gone in (
        b"connection",
        b"keep-alive",
        b"x-secret",
        b"foo",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-connection",
        b"transfer-encoding",
        b"content-length",
        b"expect",
    ):
        assert gone not in fields, gone
    assert fields[b"authorization"] == b"Bearer t" and fields[b"cookie"] == b"a=1"


def test_host_first_and_overridable_and_websocket_upgrade() -> None:
    out = fields_of(RULES.request_headers(request({b"host": b"bank.example", b"upgrade": b"websocket"})).fields)
    assert out[0] == (b"host", b"bank.example")
    out = fields_of(RULES.request_headers(request(), b"internal.svc", websocket=True).fields)
    assert out[0] == (b"host", b"internal.svc")
    fields = as_dict(out)
    assert fields[b"connection"] == b"upgrade" and fields[b"upgrade"] == b"websocket"


def test_untrusted_peers_start_a_new_forwarding_chain() -> None:
    lies = {
        b"host": b"bank.example",
        b"forwarded": b"for=1.2.3.4;proto=http",
        b"x-forwarded-for": b"1.2.3.4",
        b"x-forwarded-proto": b"http",
        b"x-forwarded-host": b"evil.example",
        b"x-request-id": b"attacker-chosen",
    }
    result = RULES.request_headers(request(lies, client="192.0.2.10"))
    fields = as_dict(result.fields)
    assert fields[b"forwarded"] == b"for=192.0.2.10;host=bank.example;proto=https"
    assert fields[b"x-forwarded-for"] == b"192.0.2.10"
    assert fields[b"x-forwarded-proto"] == b"https"
    assert fields[b"x-forwarded-host"] == b"bank.example"
    assert fields[b"x-request-id"] == result.request_id and HEX32.fullmatch(result.request_id)


def test_trusted_proxies_chains_are_extended() -> None:
    chain = {
        b"host": b"bank.example",
        b"forwarded": b"for=198.51.100.7;proto=https",
        b"x-forwarded-for": b"198.51.100.7",
        b"x-forwarded-proto": b"https",
        b"x-forwarded-host": b"www.bank.example",
        b"x-request-id": b"lb-1234.abcd",
    }
    # The gate has replaced peer.client by the client behind the proxy; the caller passes the proxy.
    result = RULES.request_headers(request(chain, client="198.51.100.7", scheme="http"), peer="10.1.2.3")
    fields = as_dict(result.fields)
    assert fields[b"forwarded"] == b"for=198.51.100.7;proto=https, for=10.1.2.3;host=bank.example;proto=http"
    assert fields[b"x-forwarded-for"] == b"198.51.100.7, 10.1.2.3"
    assert fields[b"x-forwarded-proto"] == b"https"  # the scheme the client used at the first proxy
    assert fields[b"x-forwarded-host"] == b"www.bank.example"
    assert fields[b"x-request-id"] == result.request_id == b"lb-1234.abcd"
    # A trusted proxy's id is still checked: too long or odd characters are replaced.
    for bad in (b"a" * 129, b"id with spaces", b"id;x=1", b""):
        kept = RULES.request_headers(request({b"x-request-id": bad}, client="10.1.2.3")).request_id
        assert kept != bad and HEX32.fullmatch(kept)
    assert RULES.request_headers(request({b"x-request-id": b"a" * 128}, client="10.1.2.3")).request_id == b"a" * 128


def test_ipv6_and_port_values_are_quoted_in_forwarded() -> None:
    fields = as_dict(RULES.request_headers(request(client="2001:db8::1", host="bank.example:8443")).fields)
    assert fields[b"forwarded"] == b'for="[2001:db8::1]";host="bank.example:8443";proto=https'
    assert fields[b"x-forwarded-for"] == b"2001:db8::1"
    assert fields[b"x-forwarded-host"] == b"bank.example:8443"
    trusted_v6 = {b"x-forwarded-for": b"203.0.113.9"}
    fields = as_dict(RULES.request_headers(request(trusted_v6, client="2001:db8:ffff::5")).fields)
    assert fields[b"x-forwarded-for"] == b"203.0.113.9, 2001:db8:ffff::5"
    fields = as_dict(RULES.request_headers(request(client="")).fields)
    assert fields[b"forwarded"].startswith(b"for=unknown;")


@pytest.mark.parametrize(
    ("mode", "present", "absent"),
    [
        ("rfc7239", {b"forwarded"}, {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}),
        ("x-forwarded", {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}, {b"forwarded"}),
        ("off", set(), {b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}),
    ],
)
def test_forwarding_modes(mode: str, present: set[bytes], absent: set[bytes]) -> None:
    rules = HeaderRules(ProxySettings(forwarded=mode), TRUSTED)  # type: ignore[arg-type]
    sent = {b"forwarded": b"for=1.1.1.1", b"x-forwarded-for": b"1.1.1.1", b"x-forwarded-proto": b"http"}
    for client in ("192.0.2.1", "10.0.0.1"):
        fields = as_dict(rules.request_headers(request(dict(sent), client=client)).fields)
        assert present <= fields.keys() and not (absent & fields.keys())


def test_via_is_appended_with_the_clients_version() -> None:
    fields = as_dict(RULES.request_headers(request({b"via": b"1.0 fred"}, version="1.1")).fields)
    assert fields[b"via"] == b"1.0 fred, 1.1 edgeward"
    fields = as_dict(RULES.request_headers(request(version="2")).fields)
    assert fields[b"via"] == b"2 edgeward"
    quiet = HeaderRules(ProxySettings(via=""), TRUSTED)
    assert b"via" not in as_dict(quiet.request_headers(request()).fields)
    assert as_dict(quiet.request_headers(request({b"via": b"1.1 lb"})).fields)[b"via"] == b"1.1 lb"


def test_forwarding_fields_kept_per_client_follow_each_request() -> None:
    """The block kept for clients that send no chain is never served to one that does, nor across hosts."""
    rules = HeaderRules(ProxySettings(forwarded="both"), TRUSTED)
    for _ in range(2):
        plain = as_dict(rules.request_headers(request(client="192.0.2.10")).fields)
        assert plain[b"via"] == b"1.1 edgeward" and plain[b"x-forwarded-for"] == b"192.0.2.10"
        assert plain[b"forwarded"] == b"for=192.0.2.10;host=bank.example;proto=https"
        chained = as_dict(rules.request_headers(request({b"via": b"1.0 lb"}, client="192.0.2.10")).fields)
        assert chained[b"via"] == b"1.0 lb, 1.1 edgeward"
        other = as_dict(
            rules.request_headers(request(client="192.0.2.10", host="teller.example", scheme="http")).fields
        )
        assert other[b"x-forwarded-host"] == b"teller.example" and other[b"x-forwarded-proto"] == b"http"
        trusted = as_dict(
            rules.request_headers(request({b"x-forwarded-for": b"203.0.113.9"}, client="10.1.2.3")).fields
        )
        assert trusted[b"x-forwarded-for"] == b"203.0.113.9, 10.1.2.3"
        again = as_dict(
            rules.request_headers(request({b"x-forwarded-for": b"203.0.113.9"}, client="192.0.2.10")).fields
        )
        assert again[b"x-forwarded-for"] == b"192.0.2.10"


def traced(
    headers: dict[bytes, bytes] | None = None, client: str = "10.1.2.3", ratio: float = 1.0
) -> tuple[TraceContext, dict[bytes, bytes], Outgoing]:
    """The trace context a tracer trusting 10/8 gives a request, and the head sent upstream with it."""
    tracer = Tracer(Tracing(trusted_sources=("10.0.0.0/8",), sample_ratio=ratio))
    req = request(headers, client=client)
    trace = tracer.context(req)
    assert tracer.context(req) is trace  # made once, kept on the request
    span_id = new_span_id()
    out = RULES.request_headers(req, trace=trace, span_id=span_id)
    fields = as_dict(out.fields)
    assert fields[b"traceparent"] == out.traceparent == trace.traceparent(span_id)
    assert trace.traceparent(span_id).split(b"-")[2] == span_id.hex().encode()
    return trace, fields, out


def test_a_trusted_traceparent_continues_the_trace_with_a_new_span() -> None:
    trace, fields, _ = traced({b"traceparent": VALID_TP, b"tracestate": b"congo=t61rcWkgMzE"})
    assert trace.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace.parent_id.hex() == "00f067aa0ba902b7" and trace.sampled
    assert trace.span_id not in (trace.parent_id, b"\0" * 8)
    assert fields[b"traceparent"].startswith(b"00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert fields[b"traceparent"].endswith(b"-01")
    assert fields[b"tracestate"] == b"congo=t61rcWkgMzE"


def test_an_untrusted_traceparent_is_replaced_by_a_new_trace() -> None:
    trace, fields, _ = traced({b"traceparent": VALID_TP, b"tracestate": b"a=b"}, client="192.0.2.7")
    assert trace.trace_id.hex() != "4bf92f3577b34da6a3ce929d0e0e4736" and trace.parent_id == b""
    assert b"tracestate" not in fields


def test_a_trusted_unsampled_parent_is_followed() -> None:
    trace, fields, _ = traced({b"traceparent": VALID_TP[:-2] + b"00"})
    assert not trace.sampled and fields[b"traceparent"].endswith(b"-00")


def test_no_trace_context_no_traceparent() -> None:
    out = RULES.request_headers(request({b"traceparent": VALID_TP, b"tracestate": b"a=b"}))
    fields = as_dict(out.fields)
    assert b"traceparent" not in fields and b"tracestate" not in fields and out.traceparent == b""


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        VALID_TP.upper(),
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        VALID_TP + b"-extra",  # version 00 is exactly 55 characters
        VALID_TP[:-1],
        b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(value: bytes) -> None:
    assert parse_traceparent(value) is None
    trace, fields, _ = traced({b"traceparent": value, b"tracestate": b"a=b"})
    assert trace.trace_id.hex() != "4bf92f3577b34da6a3ce929d0e0e4736" and trace.parent_id == b""
    assert fields[b"traceparent"].endswith(b"-01")  # a new trace, sampled at ratio 1
    assert b"tracestate" not in fields  # it belongs to the trace that was dropped


def test_later_traceparent_versions_are_read_as_version_00() -> None:
    later = b"01" + VALID_TP[2:] + b"-what-comes-next"
    assert parse_traceparent(later) == (b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f067aa0ba902b7", b"01")
    assert parse_traceparent(b"01" + VALID_TP[2:]) is not None


def test_sampling_follows_the_trace_id_ratio_rule() -> None:
    """OpenTelemetry's TraceIdRatioBased: the low 64 bits of the trace id against ratio * 2**64."""
    kept = [traced(ratio=0.25)[0] for _ in range(2000)]
    for trace in kept:
        assert trace.sampled == (int.from_bytes(trace.trace_id[8:], "big") < 2**62)
    assert 350 < sum(trace.sampled for trace in kept) < 650
    assert not any(traced(ratio=0.0)[0].sampled for _ in range(50))


def test_generated_ids_are_fresh() -> None:
    results = [traced() for _ in range(300)]  # crosses a buffer refill
    ids = {out.request_id for _, _, out in results} | {trace.trace_id.hex().encode() for trace, _, _ in results}
    assert len(ids) == 600
    assert len({trace.span_id for trace, _, _ in results}) == 300
    ENTROPY.reset()
    assert HEX32.fullmatch(ENTROPY.hex(32))


# --------------------------------------------------------------------------- response headers and framing


def test_response_headers_drop_hop_fields_and_append_via() -> None:
    upstream = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"12"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Internal", b"debug"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Trailer", b"x-sum"),
        (b"Upgrade", b"h2c"),
        (b"Via", b"1.1 origin"),
        (b"X-Request-ID", b"origin-made"),
        (b"Set-Cookie", b"a=1"),
    ]
    out, date = response_headers(upstream, RULES.via("1.1"))
    assert date is None
    assert out == [
        (b"Content-Type", b"text/plain"),
        (b"Via", b"1.1 origin"),
        (b"X-Request-ID", b"origin-made"),
        (b"Set-Cookie", b"a=1"),
        (b"via", b"1.1 edgeward"),
    ]
    out, _ = response_headers(upstream, b"", keep_length=True, request_id=(b"x-request-id", b"edge-id"))
    assert (b"Content-Length", b"12") in out
    assert (b"x-request-id", b"edge-id") in out and (b"X-Request-ID", b"origin-made") not in out
    assert not any(name.lower() == b"via" and value.endswith(b"edgeward") for name, value in out)


def test_response_headers_for_an_accepted_websocket_upgrade() -> None:
    upstream = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Accept", b"s3pPLM=")]
    out, _ = response_headers(upstream, b"1.1 edgeward", upgrade=True)
    assert out == [
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Accept", b"s3pPLM="),
        (b"connection", b"upgrade"),
        (b"via", b"1.1 edgeward"),
    ]


def test_response_headers_leave_date_and_server_to_the_edge_and_add_missing_security_headers() -> None:
    upstream = [
        (b"Date", b"Mon, 23 Nov 2026 04:00:00 GMT"),
        (b"Server", b"origin/1.0"),
        (b"X-Frame-Options", b"SAMEORIGIN"),
        (b"Content-Type", b"text/plain"),
    ]
    extra = [(b"X-Frame-Options", b"DENY"), (b"X-Content-Type-Options", b"nosniff")]
    out, date = response_headers(upstream, b"", extra=extra)
    assert date == b"Mon, 23 Nov 2026 04:00:00 GMT"
    assert out == [
        (b"X-Frame-Options", b"SAMEORIGIN"),
        (b"Content-Type", b"text/plain"),
        (b"X-Content-Type-Options", b"nosniff"),
    ]


def test_framing_helpers() -> None:
    assert declared_length(request(body=b"hello")) == 5
    assert declared_length(request({b"content-length": b"7"}, body=Pipe(7))) == 7
    assert declared_length(request({b"transfer-encoding": b"chunked", b"content-length": b"7"}, body=Pipe())) is None
    assert declared_length(request({}, body=Pipe())) is None
    assert request_framing("POST", None) == (b"transfer-encoding", b"chunked")
    assert request_framing("POST", 12) == (b"content-length", b"12")
    assert request_framing("POST", 0) == (b"content-length", b"0")
    assert request_framing("GET", 0) is None
    assert request_framing("GET", 3) == (b"content-length", b"3")
