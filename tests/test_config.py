"""Config validation: `ingress check`, `ingress.config.load_config`, `ingress schema`, `ingress version`.

Every problem is asserted as the exact line an operator reads: `FILE: key.path: message`.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import re
import ssl
import subprocess
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import ingress
from ingress.config import load_config
from ingress.config.model import Config
from ingress.errors import ConfigError
from tests.pki import CA, Issued, write_atomic
from tests.program import PROGRAMS, executable, ingress_argv
from tests.server import ROOT, to_toml

# `check`, `schema` and `version` must behave the same from source and as the compiled executable.
both_programs = pytest.mark.parametrize("program", PROGRAMS, indirect=True)

# --------------------------------------------------------------------------- helpers


def run_cli(*args: str, env: dict[str, str] | None = None, program: str = "python") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ingress_argv(program), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def check(path: Path, program: str = "python") -> subprocess.CompletedProcess[str]:
    return run_cli("check", "--config", str(path), program=program)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def sample(cert: str = "/nonexistent/cert.pem", key: str = "/nonexistent/key.pem", root: str = "/") -> dict[str, Any]:
    """A structurally valid config (files are only looked at by `check`)."""
    return {
        "server": {"workers": 2},
        "listeners": [
            {"name": "https", "address": "127.0.0.1:0", "tls": {"certs": [{"cert": cert, "key": key}]}},
            {"name": "http", "address": "127.0.0.1:0"},
        ],
        "routes": [{"path": "/", "static": {"root": root}}],
    }


def write_config(tmp_path: Path, data: dict[str, Any] | str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else to_toml(data))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    for problem in info.value.problems:
        assert problem.source == str(path)
    return [str(p) for p in info.value.problems]


def _mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = sample()
    fn(data)
    return data


# --------------------------------------------------------------------------- load errors

# (id, how to break the sample, exact "key: message" lines in order)
CASES: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    (
        "unknown-key-suggestion",
        lambda d: d["listeners"][0].update(tls={"certz": [{"cert": "c", "key": "k"}]}),
        [
            "listeners[0].tls.certz: unknown key; did you mean 'certs'?",
            "listeners[0].tls.certs: required key is missing",
        ],
    ),
    (
        "unknown-key-no-suggestion",
        lambda d: d["server"].update(zzz=1),
        [
            "server.zzz: unknown key; valid keys: workers, server_header, drain_timeout, drain_idle_grace,"
            " cert_poll_interval, unknown_host_status, healthz_path"
        ],
    ),
    (
        "unknown-top-level-key",
        lambda d: d.update(listener=[]),
        ["listener: unknown key; did you mean 'listeners'?"],
    ),
    (
        "wrong-type-string-for-int",
        lambda d: d["server"].update(workers="two"),
        ["server.workers: expected an integer, got str 'two'"],
    ),
    (
        "wrong-type-bool-for-int",
        lambda d: d["server"].update(workers=True),
        ["server.workers: expected an integer, got bool True"],
    ),
    (
        "wrong-type-table-for-array",
        lambda d: d["listeners"][0]["tls"].update(certs={"cert": "c", "key": "k"}),
        ["listeners[0].tls.certs: expected an array, got a table"],
    ),
    (
        "negative",
        lambda d: d["server"].update(workers=-1),
        ["server.workers: -1 is below the minimum 0"],
    ),
    (
        "over-max",
        lambda d: d["server"].update(workers=257),
        ["server.workers: 257 is above the maximum 256"],
    ),
    (
        "float-below-min",
        lambda d: d["server"].update(drain_timeout=0),
        ["server.drain_timeout: 0.0 is below the minimum 0.1"],
    ),
    (
        "bad-enum",
        lambda d: d["listeners"][0]["tls"].update(min_version="1.1"),
        ["listeners[0].tls.min_version: invalid value '1.1'; expected one of '1.2', '1.3'"],
    ),
    (
        "enum-wrong-type",
        lambda d: d["listeners"][0]["tls"].update(min_version=1.3),
        ["listeners[0].tls.min_version: invalid value 1.3; expected one of '1.2', '1.3'"],
    ),
    (
        "bad-pattern",
        lambda d: d["listeners"][0].update(name="Bad Name"),
        ["listeners[0].name: invalid value 'Bad Name'; must match ^[a-z][a-z0-9_-]*$"],
    ),
    (
        "address-not-ip",
        lambda d: d["listeners"][0].update(address="nope:80"),
        ["listeners[0].address: 'nope' is not an IP address; bind to an address, not a name"],
    ),
    (
        "address-port-too-big",
        lambda d: d["listeners"][1].update(address="localhost:99999"),
        ["listeners[1].address: port '99999' is not a number from 0 to 65535"],
    ),
    (
        "address-no-port",
        lambda d: d["listeners"][1].update(address="127.0.0.1"),
        ["listeners[1].address: expected host:port, e.g. 127.0.0.1:8443 or [::1]:8443"],
    ),
    (
        "address-used-twice",
        lambda d: [lst.update(address="127.0.0.1:8443") for lst in d["listeners"]],
        ["listeners[1].address: 127.0.0.1:8443 is already used by listener 'https'"],
    ),
    (
        # localhost binds 127.0.0.1; with SO_REUSEPORT both listeners would bind and split the traffic.
        "address-alias-localhost",
        lambda d: (
            d["listeners"][0].update(address="localhost:8443"),
            d["listeners"][1].update(address="127.0.0.1:8443"),
        ),
        ["listeners[1].address: 127.0.0.1:8443 is already used by listener 'https'"],
    ),
    (
        "address-alias-ipv6",
        lambda d: (d["listeners"][0].update(address="[::1]:8443"), d["listeners"][1].update(address="[0:0::1]:8443")),
        ["listeners[1].address: [0:0::1]:8443 is already used by listener 'https'"],
    ),
    (
        "admin-address-alias",
        lambda d: (d["listeners"][0].update(address="127.0.0.1:9901"), d.update(admin={"address": "localhost:9901"})),
        ["admin.address: localhost:9901 is already used by listener 'https'"],
    ),
    (
        "no-listeners",
        lambda d: d.update(listeners=[], routes=[]),
        ["listeners: at least one listener is required"],
    ),
    (
        "missing-required",
        lambda d: d["listeners"][0].pop("address"),
        ["listeners[0].address: required key is missing"],
    ),
    (
        "missing-listeners",
        lambda d: d.pop("listeners"),
        ["listeners: required key is missing"],
    ),
    (
        "missing-cert-key",
        lambda d: d["listeners"][0]["tls"]["certs"][0].pop("key"),
        ["listeners[0].tls.certs[0].key: required key is missing"],
    ),
    (
        "empty-certs",
        lambda d: d["listeners"][0]["tls"].update(certs=[]),
        ["listeners[0].tls.certs: at least one certificate is required; add { cert = ..., key = ... }"],
    ),
    (
        "duplicate-listener-names",
        lambda d: d["listeners"][1].update(name="https"),
        ["listeners[1].name: duplicate listener name 'https' (also listeners[0])"],
    ),
    (
        "route-unknown-listener",
        lambda d: d["routes"][0].update(listeners=["nosuch"]),
        ["routes[0].listeners[0]: no listener named 'nosuch'; listeners are https, http"],
    ),
    (
        "route-static-and-redirect",
        lambda d: d["routes"][0].update(redirect={"scheme": "https"}),
        ["routes[0]: needs exactly one handler (static, redirect or proxy), has static and redirect"],
    ),
    (
        "route-no-handler",
        lambda d: d["routes"][0].pop("static"),
        ["routes[0]: needs exactly one handler (static, redirect or proxy), has none"],
    ),
    (
        "proxy-unknown-upstream",
        lambda d: d["routes"].append({"path": "/api/", "proxy": {"upstream": "ap"}}),
        ["routes[1].proxy.upstream: no upstream named 'ap'; upstreams: none are defined; add [[upstreams]]"],
    ),
    (
        "upstream-origin-by-name",
        lambda d: d.update(upstreams=[{"name": "app", "origins": ["http://origin.example:80"]}]),
        ["upstreams[0].origins[0]: 'origin.example' is not an IP address; origins are addresses (or localhost)"],
    ),
    (
        "upstream-origin-with-path",
        lambda d: d.update(upstreams=[{"name": "app", "origins": ["http://127.0.0.1:9000/api"]}]),
        ["upstreams[0].origins[0]: 'http://127.0.0.1:9000/api' must be scheme://host:port with no path, query or user"],
    ),
    (
        "cache-targeted-field-not-a-header",
        lambda d: d.update(cache={"targeted_fields": ["CDN-Cache-Control", "Surrogate Control"]}),
        ["cache.targeted_fields[1]: 'Surrogate Control' is not a header name, e.g. CDN-Cache-Control"],
    ),
    (
        "upstream-bad-hash-on",
        lambda d: d.update(upstreams=[{"name": "app", "origins": ["http://127.0.0.1:1"], "hash_on": "header:"}]),
        ["upstreams[0].hash_on: 'header:': use client_ip, header:NAME or cookie:NAME"],
    ),
    (
        "upstream-client-cert-without-key",
        lambda d: d.update(
            upstreams=[{"name": "app", "origins": ["https://127.0.0.1:1"], "client_cert": "/etc/edge.pem"}]
        ),
        ["upstreams[0].client_key: client_cert and client_key go together; set both or neither"],
    ),
    (
        "route-collision",
        lambda d: d["routes"].append({"path": "/", "listeners": ["http"], "redirect": {"scheme": "https"}}),
        [
            "routes[1]: collides with routes[0]: both serve host '*' path '/' on listener 'http';"
            " change the path, host or listeners"
        ],
    ),
    (
        "route-collision-host-case",
        lambda d: d["routes"].extend(
            [
                {"host": "example.com", "path": "/a", "static": {"root": "/"}},
                {"host": "EXAMPLE.com", "path": "/a", "listeners": ["https"], "static": {"root": "/"}},
            ]
        ),
        [
            "routes[2]: collides with routes[1]: both serve host 'EXAMPLE.com' path '/a' on listener 'https';"
            " change the path, host or listeners"
        ],
    ),
    (
        "static-with-post",
        lambda d: d["routes"][0].update(methods=["GET", "POST"]),
        ["routes[0].methods: a static route serves only GET and HEAD; remove POST"],
    ),
    (
        "lower-case-method",
        lambda d: d["routes"].append({"path": "/r", "methods": ["get"], "redirect": {}}),
        ["routes[1].methods[0]: 'get' is not an upper-case HTTP method token"],
    ),
    (
        "route-path-not-normalised",
        lambda d: d["routes"][0].update(path="/a/../b"),
        ["routes[0].path: '/a/../b' must be a normalised path without //, . or .. segments"],
    ),
    (
        "bad-redirect-status",
        lambda d: d["routes"].append({"path": "/r", "redirect": {"status": 303}}),
        ["routes[1].redirect.status: invalid value 303; expected one of 301, 302, 307, 308"],
    ),
    (
        "otlp-batch-above-queue",
        lambda d: d.update(
            telemetry={"otlp": {"endpoint": "http://127.0.0.1:4318", "queue_spans": 64, "batch_spans": 128}}
        ),
        ["telemetry.otlp.batch_spans: 128 is above queue_spans (64); lower it to 64 or less"],
    ),
    (
        "bad-sni-name",
        lambda d: d["listeners"][0]["tls"]["certs"][0].update(names=["*"]),
        ["listeners[0].tls.certs[0].names[0]: '*' is not a DNS name or *.domain wildcard"],
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_config_reports_exact_problems(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    path = write_config(tmp_path, _mutate(mutate))
    assert problems_of(path) == [f"{path}: {line}" for line in expected]


@both_programs
@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_cli_reports_exact_problems(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: list[str], program: str
) -> None:
    path = write_config(tmp_path, _mutate(mutate))
    out = check(path, program)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert lines(out.stderr) == [f"{path}: {line}" for line in expected]


def test_unknown_key_message_is_exact(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[[listeners]]
name = "https"
address = "127.0.0.1:0"
[listeners.tls]
certz = [{ cert = "c.pem", key = "k.pem" }]
""",
    )
    out = check(path)
    assert out.returncode == 2
    assert f"{path}: listeners[0].tls.certz: unknown key; did you mean 'certs'?" in out.stderr


def test_several_problems_one_line_each(tmp_path: Path) -> None:
    data = sample()
    data["server"].update(workers="two", drain_timeout=-1, zzz=1)
    data["listeners"][0]["tls"].update(min_version="1.1", certz=[])
    data["listeners"][1].update(name="HTTP")
    data["access_log"] = {"enabled": "yes"}
    path = write_config(tmp_path, data)
    expected = [
        f"{path}: server.workers: expected an integer, got str 'two'",
        f"{path}: server.drain_timeout: -1.0 is below the minimum 0.1",
        f"{path}: server.zzz: unknown key; valid keys: workers, server_header, drain_timeout, drain_idle_grace,"
        " cert_poll_interval, unknown_host_status, healthz_path",
        f"{path}: listeners[0].tls.min_version: invalid value '1.1'; expected one of '1.2', '1.3'",
        f"{path}: listeners[0].tls.certz: unknown key; did you mean 'certs'?",
        f"{path}: listeners[1].name: invalid value 'HTTP'; must match ^[a-z][a-z0-9_-]*$",
        f"{path}: access_log.enabled: expected true or false, got str 'yes'",
    ]
    out = check(path)
    assert out.returncode == 2
    assert lines(out.stderr) == expected
    assert problems_of(path) == expected


def test_several_rule_problems_one_line_each(tmp_path: Path) -> None:
    data = sample()
    data["listeners"][1].update(name="https", address="nope:80")
    data["routes"] = [
        {"path": "/", "listeners": ["nosuch"], "static": {"root": "/"}, "redirect": {}},
        {"path": "/", "static": {"root": "/"}, "methods": ["POST"]},
        {"path": "/", "redirect": {}},
    ]
    path = write_config(tmp_path, data)
    expected = [
        f"{path}: listeners[1].name: duplicate listener name 'https' (also listeners[0])",
        f"{path}: listeners[1].address: 'nope' is not an IP address; bind to an address, not a name",
        f"{path}: routes[0]: needs exactly one handler (static, redirect or proxy), has static and redirect",
        f"{path}: routes[0].listeners[0]: no listener named 'nosuch'; listeners are https",
        f"{path}: routes[1].methods: a static route serves only GET and HEAD; remove POST",
        f"{path}: routes[2]: collides with routes[1]: both serve host '*' path '/' on listener 'https';"
        " change the path, host or listeners",
    ]
    out = check(path)
    assert out.returncode == 2
    assert lines(out.stderr) == expected
    assert problems_of(path) == expected


def test_same_path_on_different_listeners_is_not_a_collision(tmp_path: Path) -> None:
    data = sample()
    data["routes"] = [
        {"path": "/", "listeners": ["https"], "static": {"root": "/"}},
        {"path": "/", "listeners": ["http"], "redirect": {}},
        {"path": "/", "host": "example.com", "static": {"root": "/"}},
    ]
    config = load_config(write_config(tmp_path, data))
    assert [r.listeners for r in config.routes] == [("https",), ("http",), ()]


@both_programs
def test_invalid_toml(tmp_path: Path, program: str) -> None:
    path = write_config(tmp_path, '[server]\nworkers = 2\nserver_header = "x\n')
    out = check(path, program)
    assert out.returncode == 2
    (line,) = lines(out.stderr)
    assert line.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in line
    (problem,) = problems_of(path)
    assert problem == line


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n[server]\nworkers = 1\n")
    out = check(path)
    assert out.returncode == 2
    assert lines(out.stderr) == [f"{path}: not UTF-8 at byte 5"]


@both_programs
def test_missing_file(tmp_path: Path, program: str) -> None:
    path = tmp_path / "absent.toml"
    out = check(path, program)
    assert out.returncode == 2
    assert lines(out.stderr) == [f"{path}: cannot read file: No such file or directory"]
    assert problems_of(path) == [f"{path}: cannot read file: No such file or directory"]


def test_unreadable_file(tmp_path: Path) -> None:
    # The suite may run as root, for whom mode 000 is still readable; a directory is unreadable for everyone.
    path = tmp_path / "edge.toml"
    path.mkdir()
    out = check(path)
    assert out.returncode == 2
    assert lines(out.stderr) == [f"{path}: cannot read file: Is a directory"]


# --------------------------------------------------------------------------- check: files


@pytest.fixture
def good(ca: CA) -> Issued:
    return ca.issue("check-good", ["localhost"])


@both_programs
def test_check_valid_config(tmp_path: Path, good: Issued, program: str) -> None:
    path = write_config(tmp_path, sample(str(good.cert), str(good.key), str(tmp_path)))
    out = check(path, program)
    assert out.returncode == 0, out.stderr
    assert lines(out.stderr) == [f"{path}: ok (2 listeners, 1 routes)"]
    assert out.stdout == ""


def _check_one(tmp_path: Path, data: dict[str, Any], program: str = "python") -> list[str]:
    path = write_config(tmp_path, data)
    # The structure is valid: load_config accepts it, only `check` (which opens files) refuses it.
    load_config(path)
    out = check(path, program)
    assert out.returncode == 2, out.stderr
    return [line.removeprefix(f"{path}: ") for line in lines(out.stderr)]


def test_check_missing_cert_file(tmp_path: Path, good: Issued) -> None:
    missing = tmp_path / "missing.pem"
    got = _check_one(tmp_path, sample(str(missing), str(good.key), str(tmp_path)))
    assert got == [f"listeners[0].tls.certs[0]: certificate file {missing} does not exist"]


def test_check_missing_key_file(tmp_path: Path, good: Issued) -> None:
    missing = tmp_path / "missing-key.pem"
    got = _check_one(tmp_path, sample(str(good.cert), str(missing), str(tmp_path)))
    assert got == [f"listeners[0].tls.certs[0]: key file {missing} does not exist"]


def test_check_key_not_matching_cert(tmp_path: Path, ca: CA, good: Issued) -> None:
    other = ca.issue("check-other", ["localhost"])
    got = _check_one(tmp_path, sample(str(good.cert), str(other.key), str(tmp_path)))
    assert got == [
        f"listeners[0].tls.certs[0]: key file {other.key} does not match the certificate in {good.cert}"
        " (the first certificate must be the leaf)"
    ]


def test_check_second_pair_mismatch_names_its_index(tmp_path: Path, ca: CA, good: Issued) -> None:
    rsa = ca.issue("check-rsa", ["rsa.test"], key_type="rsa")
    data = sample(str(good.cert), str(good.key), str(tmp_path))
    data["listeners"][0]["tls"]["certs"].append({"cert": str(rsa.cert), "key": str(good.key)})
    got = _check_one(tmp_path, data)
    assert got == [
        f"listeners[0].tls.certs[1]: key file {good.key} does not match the certificate in {rsa.cert}"
        " (the first certificate must be the leaf)"
    ]


def test_check_expired_cert(tmp_path: Path, ca: CA) -> None:
    old = ca.issue("check-expired", ["localhost"], days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    expired_on = x509.load_pem_x509_certificate(old.cert.read_bytes()).not_valid_after_utc
    got = _check_one(tmp_path, sample(str(old.cert), str(old.key), str(tmp_path)))
    assert got == [f"listeners[0].tls.certs[0]: certificate in {old.cert} expired on {expired_on:%Y-%m-%d}"]


def test_check_encrypted_key(tmp_path: Path, good: Issued) -> None:
    key = serialization.load_pem_private_key(good.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    got = _check_one(tmp_path, sample(str(good.cert), str(encrypted), str(tmp_path)))
    assert got == [
        f"listeners[0].tls.certs[0]: key file {encrypted} is encrypted;"
        " provide an unencrypted key readable only by the server"
    ]


def test_check_garbage_cert(tmp_path: Path, good: Issued) -> None:
    garbage = tmp_path / "garbage.pem"
    write_atomic(garbage, b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    got = _check_one(tmp_path, sample(str(garbage), str(good.key), str(tmp_path)))
    assert got == [f"listeners[0].tls.certs[0]: certificate file {garbage} holds no PEM certificate"]


def test_check_static_root_missing(tmp_path: Path, good: Issued) -> None:
    root = tmp_path / "no-such-root"
    got = _check_one(tmp_path, sample(str(good.cert), str(good.key), str(root)))
    assert got == [f"routes[0].static.root: {root} does not exist"]


def test_check_static_root_is_a_file(tmp_path: Path, good: Issued) -> None:
    root = tmp_path / "file"
    root.write_text("x")
    got = _check_one(tmp_path, sample(str(good.cert), str(good.key), str(root)))
    assert got == [f"routes[0].static.root: {root} is not a directory"]


@both_programs
def test_check_reports_every_file_problem(tmp_path: Path, ca: CA, good: Issued, program: str) -> None:
    other = ca.issue("check-other2", ["localhost"])
    missing_root = tmp_path / "gone"
    data = sample(str(good.cert), str(other.key), str(missing_root))
    data["listeners"].append(
        {"name": "alt", "address": "127.0.0.1:0", "tls": {"certs": [{"cert": str(tmp_path / "x.pem"), "key": "k"}]}}
    )
    got = _check_one(tmp_path, data, program)
    assert got == [
        f"listeners[0].tls.certs[0]: key file {other.key} does not match the certificate in {good.cert}"
        " (the first certificate must be the leaf)",
        f"listeners[2].tls.certs[0]: certificate file {tmp_path / 'x.pem'} does not exist",
        f"routes[0].static.root: {missing_root} does not exist",
    ]


# --------------------------------------------------------------------------- schema

_JSON_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
_KEYWORDS = {
    "$schema",
    "$id",
    "title",
    "type",
    "properties",
    "additionalProperties",
    "required",
    "items",
    "enum",
    "description",
    "default",
    "minimum",
    "maximum",
    "pattern",
}
_PY = {str: "string", int: "integer", float: "number", bool: "boolean"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    out = run_cli("schema")
    assert out.returncode == 0, out.stderr
    return typing.cast(dict[str, Any], json.loads(out.stdout))


def _nodes(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "type" in node or "enum" in node:
            found.append(node)
        for key in ("properties",):
            for child in node.get(key, {}).values():
                found.extend(_nodes(child))
        if "items" in node:
            found.extend(_nodes(node["items"]))
    return found


def _validate(instance: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """A minimal validator for the keywords the schema uses (jsonschema is not installed)."""
    errors: list[str] = []
    kind = node.get("type")
    if "enum" in node and (instance not in node["enum"] or isinstance(instance, bool)):
        errors.append(f"{path}: not in enum")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind is not None and not checks[kind](instance):
        return [*errors, f"{path}: not {kind}"]
    if kind == "object":
        for key in node.get("required", []):
            if key not in instance:
                errors.append(f"{path}.{key}: required")
        for key, value in instance.items():
            if key not in node["properties"]:
                if node.get("additionalProperties") is False:
                    errors.append(f"{path}.{key}: additional property")
                continue
            errors.extend(_validate(value, node["properties"][key], f"{path}.{key}"))
    if kind == "array":
        for i, item in enumerate(instance):
            errors.extend(_validate(item, node["items"], f"{path}[{i}]"))
    if "minimum" in node and instance < node["minimum"]:
        errors.append(f"{path}: below minimum")
    if "maximum" in node and instance > node["maximum"]:
        errors.append(f"{path}: above maximum")
    if "pattern" in node and not re.search(node["pattern"], instance):
        errors.append(f"{path}: pattern")
    return errors


def _unwrap(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return inner
    return tp


def _walk_model(cls: type, node: dict[str, Any], where: str, seen: set[str]) -> None:
    seen.add(cls.__name__)
    assert node["type"] == "object", where
    assert node["additionalProperties"] is False, where
    fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    hints = get_type_hints(cls)
    assert list(node["properties"]) == [f.name for f in fields], where
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    assert node.get("required", []) == required, where
    for f in fields:
        prop = node["properties"][f.name]
        at = f"{where}.{f.name}"
        assert prop["description"] == f.metadata["doc"], at
        assert prop["description"].strip(), at
        for key in ("minimum", "maximum", "pattern"):
            assert prop.get(key) == f.metadata.get(key), at
        if f.default is not dataclasses.MISSING and f.default is not None:
            expected = list(f.default) if isinstance(f.default, tuple) else f.default
            assert prop["default"] == expected, at
        else:
            assert "default" not in prop, at
        tp = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp):
            _walk_model(typing.cast(type, tp), prop, at, seen)
        elif get_origin(tp) is tuple:
            assert prop["type"] == "array", at
            item_tp = get_args(tp)[0]
            if dataclasses.is_dataclass(item_tp):
                _walk_model(typing.cast(type, item_tp), prop["items"], f"{at}[]", seen)
            elif get_origin(item_tp) is Literal:
                assert prop["items"] == {"enum": list(get_args(item_tp))}, at
            else:
                assert prop["items"] == {"type": _PY[item_tp]}, at
        elif get_origin(tp) is Literal:
            assert prop["enum"] == list(get_args(tp)), at
            assert "type" not in prop, at
        elif get_origin(tp) is collections.abc.Mapping:
            assert prop == {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": f.metadata["doc"],
            }
        else:
            assert prop["type"] == _PY[tp], at


def test_schema_is_json_schema(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("https://")
    assert schema["title"]
    nodes = _nodes(schema)
    assert len(nodes) > 50

    def keys(node: Any) -> None:
        if isinstance(node, dict):
            assert set(node) <= _KEYWORDS, set(node) - _KEYWORDS
            for child in node.get("properties", {}).values():
                keys(child)
            if "items" in node:
                keys(node["items"])

    keys(schema)
    objects = [n for n in nodes if n.get("type") == "object"]
    # Every dataclass in the model (policy, upstreams, telemetry and the firewall included), and the two string
    # tables: telemetry.resource and telemetry.otlp.headers.
    assert len(objects) == 41
    for node in nodes:
        if "type" in node:
            assert node["type"] in _JSON_TYPES
        if node.get("type") == "object" and "properties" not in node:  # a table of strings
            assert node["additionalProperties"] == {"type": "string"}
        elif node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert isinstance(node["properties"], dict)
            assert node["properties"]
            assert set(node.get("required", [])) <= set(node["properties"])
            for prop in node["properties"].values():
                assert isinstance(prop.get("description"), str)
                assert prop["description"]
        if node.get("type") == "array":
            assert isinstance(node["items"], dict)
        if "enum" in node:
            assert node["enum"]
            assert len(set(map(repr, node["enum"]))) == len(node["enum"])
        if "pattern" in node:
            re.compile(node["pattern"])
        if "default" in node:
            assert _validate(node["default"], {k: v for k, v in node.items() if k != "default"}) == []


def test_schema_matches_model(schema: dict[str, Any]) -> None:
    seen: set[str] = set()
    _walk_model(Config, schema, "config", seen)
    assert "source" not in schema["properties"]  # set by the loader, not by users
    assert schema["required"] == ["listeners"]
    assert seen == {
        "Config",
        "ServerSettings",
        "Limits",
        "AccessLog",
        "Admin",
        "Listener",
        "SocketOptions",
        "TLSSettings",
        "CertPair",
        "Route",
        "Cors",
        "StaticSite",
        "Redirect",
        "SecurityHeaders",
        "HTTP2Settings",
        "QuicSettings",
        "Policy",
        "NetworkPolicy",
        "JWTProvider",
        "JWTKey",
        "JWKSSource",
        "IdentityRoles",
        "RateLimit",
        "PolicyRule",
        "Grant",
        "Upstream",
        "HealthCheck",
        "OutlierDetection",
        "ProxyRoute",
        "ProxySettings",
        "CacheSettings",
        "Telemetry",
        "Tracing",
        "OTLP",
        "Files",
        "Audit",
        "Waf",
        "WafProfile",
        "RouteWaf",
    }


def test_schema_accepts_what_the_loader_accepts(schema: dict[str, Any], tmp_path: Path) -> None:
    full = sample()
    full["limits"] = {"max_header_bytes": 8192, "idle_timeout": 5}
    full["access_log"] = {"enabled": False, "path": "-"}
    full["admin"] = {"enabled": True, "address": "127.0.0.1:0"}
    full["routes"].append(
        {"path": "/old", "host": "*.example.com", "redirect": {"status": 301, "port": 8443}, "headers": {"hsts": ""}}
    )
    load_config(write_config(tmp_path, full))
    assert _validate(full, schema) == []
    broken = copy.deepcopy(full)
    broken["listeners"][0]["tls"]["certz"] = []
    broken["server"]["workers"] = "two"
    broken["listeners"][0]["tls"]["min_version"] = "1.1"
    broken["server"]["drain_timeout"] = 0
    del broken["listeners"][1]["address"]
    assert sorted(_validate(broken, schema)) == sorted(
        [
            ".listeners[0].tls.certz: additional property",
            ".server.workers: not integer",
            ".listeners[0].tls.min_version: not in enum",
            ".server.drain_timeout: below minimum",
            ".listeners[1].address: required",
        ]
    )


def test_schema_defaults_load(schema: dict[str, Any], tmp_path: Path) -> None:
    """Every documented default is a value the loader accepts."""

    def defaults(node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, prop in node["properties"].items():
            if "default" in prop:
                out[name] = prop["default"]
            elif prop.get("type") == "object" and "properties" not in prop:
                out[name] = {}  # a table of strings, empty by default
            elif prop.get("type") == "object" and not prop.get("required"):
                out[name] = defaults(prop)
        return out

    data = defaults(schema)
    data["listeners"] = [{"name": "https", "address": "127.0.0.1:0"}]
    data["routes"] = [
        {**defaults(schema["properties"]["routes"]["items"]), "redirect": defaults(_redirect_node(schema))}
    ]
    config = load_config(write_config(tmp_path, data))
    assert config.server.drain_timeout == 10.0


def _redirect_node(schema: dict[str, Any]) -> dict[str, Any]:
    return typing.cast(dict[str, Any], schema["properties"]["routes"]["items"]["properties"]["redirect"])


# --------------------------------------------------------------------------- version


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ingress", "version"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "EDGEWARD_BUILD_ID": "ci-1234"},
    )
    assert out.returncode == 0, out.stderr
    # From source there is no executable to hash, and the environment cannot name a build.
    assert out.stdout.splitlines() == [
        f"edgeward {ingress.__version__}",
        f"python {platform.python_version()}",
        f"openssl {ssl.OPENSSL_VERSION}",
        "build source",
    ]


def test_executable_schema_is_the_sources(schema: dict[str, Any]) -> None:
    out = run_cli("schema", program="executable")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == schema


def test_executable_version_names_its_build_and_its_own_digest() -> None:
    """The executable prints the build id it was compiled with and the SHA-256 of its own file."""
    exe = executable()
    record = json.loads(exe.with_name(exe.name + ".build.json").read_text())
    out = run_cli("version", program="executable", env={"EDGEWARD_BUILD_ID": "not-this"})
    assert out.returncode == 0, out.stderr
    got = out.stdout.splitlines()
    assert got[:2] == [f"edgeward {ingress.__version__}", f"python {platform.python_version()}"]
    assert got[2].startswith("openssl OpenSSL 3.")
    assert got[3] == f"build {record['build_id']}"
    digest = hashlib.sha256(exe.read_bytes()).hexdigest()
    assert digest == record["executable_sha256"]
    assert got[4] == f"sha256 {digest}  {exe.resolve()}"
    assert len(got) == 5


def test_check_upstream_ca_missing(tmp_path: Path, good: Issued) -> None:
    config = sample(str(good.cert), str(good.key), str(tmp_path))
    missing = tmp_path / "no-ca.pem"
    config["upstreams"] = [{"name": "payments", "origins": ["https://127.0.0.1:8443"], "ca": str(missing)}]
    got = _check_one(tmp_path, config)
    assert got == [f"upstreams[payments].ca: CA file {missing} does not exist"]
