"""Access-policy benchmarks (issue 4): what mTLS, JWT and RBAC cost edgeward.

    .venv/bin/python bench/policy.py --rounds 3 --duration 6 --json bench/results/policy.json

Cells, each run once per round on a fresh server process (one worker on
CPU 0; the load generator on CPU 1), interleaved in this order every round:

``noauth``
    edgeward, HTTPS listener with ``client_auth = "required"`` (client CA
    generated per run), one static route, **no** ``[policy]`` table.
    ``wrk -t1 -c64`` GET /1k.bin presenting the client certificate and the
    same ``Authorization: Bearer`` header as ``auth_repeated`` (ignored here),
    so both cells get byte-identical requests and the same handshakes.
``auth_repeated``
    the same server and listener plus a ``[policy]``: one rule on ``/`` with
    ``client_cert = true``, ``jwt`` (ES256, key generated per run) and a grant
    for role ``payments.read``, and an identity mapping for the client
    certificate's SPIFFE ID. One token repeated: after the first request the
    verified-token cache answers. Target: >= 0.85x ``noauth``.
``auth_distinct``
    the same policy server; a wrk Lua script sends a different valid token
    with every request (pre-minted, read from a file), so every request costs
    a signature check. Reported: req/s and requests per server CPU-second,
    i.e. signature checks per second per core (a lower bound: TLS, HTTP and
    the rest of the policy are in it too), and the marginal cost of a check
    (server CPU per request minus that of ``auth_repeated``).
``mtls_hs_edgeward`` / ``mtls_hs_nginx``
    ``openssl s_time -new -cert -key`` full handshakes against edgeward
    (``client_auth = "required"``, the ``noauth`` config) and nginx
    (``ssl_verify_client on; ssl_client_certificate``), same server
    certificate, same client certificate, default suites on both (TLS 1.3).
    Target: edgeward >= 0.8x nginx, judged on handshakes per server
    CPU-second (s_time makes one connection at a time and is client- and
    latency-bound, so its wall-clock rate mostly measures the client); the
    wall-clock rate is reported too.

wrk cannot present a client certificate, so ``bench/clientcert.c`` is
compiled per run into an LD_PRELOAD shim that loads the certificate into
every ``SSL_CTX`` wrk creates. Before any measurement a self-test proves that
an mTLS server refuses wrk without the shim and serves it with it; every cell
also checks that a request without a client certificate is refused, and the
policy cells that a request without a token, or with one signed by an unknown
key, gets a 401.

No number is filled in: a failed check, a non-2xx response, a repeated token
in the distinct-token cell or > 1 % socket errors makes the cell an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from certs import make_certs, make_client_certs  # noqa: E402
from interleaved import CellResult, on_signal, paired_ratios, ratio, scratch_dir  # noqa: E402
from run import (  # noqa: E402
    BUSY_THRESHOLD,
    DEFAULT_INGRESS,
    FOREIGN_THRESHOLD,
    SERVER_CPU,
    cpu_model,
    foreign_load,
    git_rev,
    log,
    make_www,
    pin_self_to_client_cpu,
    raise_nofile,
    wait_quiet,
)
from servers import (  # noqa: E402
    BenchEnv,
    Edgeward,
    Mode,
    NginxMTLS,
    RunningServer,
    Server,
    ServerError,
)
from workloads import (  # noqa: E402
    CLIENT_CPU,
    WARMUP_SECONDS,
    ServerCpu,
    WorkloadError,
    _preflight,
    _s_time,
    _wrk,
)

PATH = "/1k.bin"
ROLE = "payments.read"
ISSUER = "https://idp.bench"
AUDIENCE = "bench"
KID = "k1"
SPIFFE_ID = "spiffe://bench/client"
TOKEN_LIFETIME = 6 * 3600
WRK_CONNECTIONS = 64
WARM_TOKENS = 40_000
"""Distinct tokens for the 1 s warm-up of ``auth_distinct`` (never used in
the measured run)."""
DEFAULT_TOKENS = 200_000
"""Distinct tokens for the measured run; must exceed what one run can use."""
REPEATED_TARGET = 0.85
HANDSHAKE_TARGET = 0.80
CELLS = ("noauth", "auth_repeated", "auth_distinct", "mtls_hs_edgeward", "mtls_hs_edgeward_nt", "mtls_hs_nginx")

LUA_DISTINCT = r"""-- bench/policy.py: a different bearer token with every request.
-- args[1]: file with one token per line. Prints bench.* lines from done().
tokens = {}
loaded = 0
used = 0
wraps = 0
local prefix

function init(args)
  for line in io.lines(args[1]) do
    loaded = loaded + 1
    tokens[loaded] = line
  end
  prefix = "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\nAuthorization: Bearer "
end

function request()
  used = used + 1
  local i = used
  if i > loaded then
    i = (used - 1) % loaded + 1
    wraps = math.floor((used - 1) / loaded)
  end
  return prefix .. tokens[i] .. "\r\n\r\n"
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local u, l, w = 0, 0, 0
  for _, t in ipairs(threads) do
    u = u + t:get("used")
    l = l + t:get("loaded")
    w = math.max(w, t:get("wraps"))
  end
  io.write(string.format("bench.tokens_used=%d\nbench.tokens_loaded=%d\nbench.wraps=%d\n", u, l, w))
end
"""


# --------------------------------------------------------------------------
# Inputs: client PKI, JWT key, tokens, shim


@dataclass(frozen=True)
class Inputs:
    client_ca: Path
    client_cert: Path
    client_key: Path
    jwt_public: Path
    repeated_token: str
    probe_token: str
    foreign_token: str
    """Valid claims and kid, signed by a key the server does not know."""
    warm_tokens: Path
    tokens: Path
    token_count: int
    shim: Path
    lua: Path


def make_client_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A client CA and one client certificate it issues (see certs.make_client_certs). Returns (ca, cert, key)."""
    return make_client_certs(directory, SPIFFE_ID)


def make_tokens(directory: Path, count: int) -> tuple[Path, str, str, str, Path, Path]:
    """ES256 key pair and tokens (PyJWT). Returns (public key PEM, repeated
    token, probe token, foreign-key token, warm-up token file, measured token
    file); every token differs (own ``sub`` and ``jti``, and ECDSA
    signatures are randomised)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pub = directory / "es256.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    now = int(time.time())
    headers = {"kid": KID}

    def mint(sub: str, signer: ec.EllipticCurvePrivateKey = key) -> str:
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "jti": sub,
            "iat": now,
            "exp": now + TOKEN_LIFETIME,
            "roles": [ROLE],
        }
        return jwt.encode(claims, signer, algorithm="ES256", headers=headers)

    repeated, probe = mint("repeated"), mint("probe")
    foreign = mint("foreign", ec.generate_private_key(ec.SECP256R1()))
    warm, measured = directory / "warm-tokens.txt", directory / "tokens.txt"
    with warm.open("w") as f:
        f.writelines(mint(f"warm-{i}") + "\n" for i in range(WARM_TOKENS))
    with measured.open("w") as f:
        f.writelines(mint(f"user-{i}") + "\n" for i in range(count))
    return pub.resolve(), repeated, probe, foreign, warm.resolve(), measured.resolve()


def build_shim(directory: Path) -> Path:
    """Compile bench/clientcert.c into an LD_PRELOAD library."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("a C compiler (cc) is needed for the client-certificate shim (apt-get install -y gcc)")
    out = directory / "clientcert.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(BENCH_DIR / "clientcert.c"), "-ldl"],
        check=True,
    )
    return out.resolve()


def make_inputs(workdir: Path, token_count: int) -> Inputs:
    ca, cert, key = make_client_pki(workdir / "client-pki")
    t0 = time.monotonic()
    pub, repeated, probe_token, foreign, warm, tokens = make_tokens(workdir / "jwt", token_count)
    log(f"minted {token_count + WARM_TOKENS + 3:,} ES256 tokens in {time.monotonic() - t0:.1f} s")
    lua = workdir / "distinct.lua"
    lua.write_text(LUA_DISTINCT)
    return Inputs(
        client_ca=ca,
        client_cert=cert,
        client_key=key,
        jwt_public=pub,
        repeated_token=repeated,
        probe_token=probe_token,
        foreign_token=foreign,
        warm_tokens=warm,
        tokens=tokens,
        token_count=token_count,
        shim=build_shim(workdir),
        lua=lua.resolve(),
    )


# --------------------------------------------------------------------------
# Servers


class EdgewardNoAuth(Edgeward):
    """edgeward with mTLS required on its only (HTTPS) listener, no policy."""

    name = "edgeward-noauth"
    protocols = frozenset({"https"})
    http_versions = frozenset({"h1"})


class EdgewardPolicy(EdgewardNoAuth):
    """The same plus the ``[policy]`` table (mTLS + JWT + RBAC on ``/``)."""

    name = "edgeward-policy"


def tls_client_auth(inputs: Inputs) -> str:
    return f'client_auth = "required"\nclient_ca = ["{inputs.client_ca}"]\n'


def policy_table(inputs: Inputs) -> str:
    return f"""
[policy]
roles = ["{ROLE}"]

[[policy.jwt]]
name = "idp"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
keys = [{{ kid = "{KID}", alg = "ES256", file = "{inputs.jwt_public}" }}]

[[policy.identities]]
spiffe_id = "spiffe://bench/*"
roles = ["{ROLE}"]

[[policy.rules]]
name = "api"
path = "/"
client_cert = true
jwt = "idp"
grants = [{{ roles = ["{ROLE}"] }}]
"""


@dataclass
class Servers:
    noauth: EdgewardNoAuth
    noauth_nt: EdgewardNoAuth  # session tickets off, as the nginx cell has them (ssl_session_tickets off)
    policy: EdgewardPolicy
    nginx: NginxMTLS


def make_servers(env: BenchEnv, inputs: Inputs) -> Servers:
    tls = tls_client_auth(inputs)
    return Servers(
        noauth=EdgewardNoAuth(env, tls_extra=tls),
        noauth_nt=EdgewardNoAuth(env, tls_extra=tls + "session_tickets = false\n"),
        policy=EdgewardPolicy(env, tls_extra=tls, extra_config=policy_table(inputs)),
        nginx=NginxMTLS(env, inputs.client_ca),
    )


# --------------------------------------------------------------------------
# Checks


def _get(
    server: RunningServer, path: str, *, cert: bool, headers: Mapping[str, str] | None = None
) -> tuple[int | None, str]:
    """One GET over TLS (server certificate verified against the bench CA);
    (status, note). status None = no HTTP response at all (handshake refused,
    connection closed...)."""
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    if cert and server.client_cert is not None:
        ctx.load_cert_chain(str(server.client_cert[0]), str(server.client_cert[1]))
    conn = http.client.HTTPSConnection("127.0.0.1", server.ports["https"], timeout=5, context=ctx)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.reason
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def check_cert_required(server: RunningServer, headers: Mapping[str, str]) -> dict[str, Any]:
    """Without a client certificate (but with a valid token) there must be no
    200: edgeward refuses the handshake; nginx completes it and answers 400."""
    status, note = _get(server, PATH, cert=False, headers=headers)
    if status == 200:
        raise WorkloadError(f"{server.name} served {PATH} to a client without a certificate")
    return {"status": status, "note": note[:200]}


def check_token_required(server: RunningServer, inputs: Inputs) -> dict[str, Any]:
    """The policy is in force: with the certificate but no token, or a token
    signed by an unknown key, a 401."""
    out: dict[str, Any] = {}
    for what, headers in (
        ("no_token", {}),
        ("foreign_key_token", {"Authorization": f"Bearer {inputs.foreign_token}"}),
    ):
        status, note = _get(server, PATH, cert=True, headers=headers)
        if status != 401:
            raise WorkloadError(f"{server.name}: GET {PATH} with a certificate and {what} -> {status} {note}, want 401")
        out[what] = status
    return out


def s_client_get(port: int, inputs: Inputs | None) -> tuple[str, str]:
    """GET over ``openssl s_client`` (same certificate loading as s_time):
    returns (status line, stderr tail)."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", "-servername", "localhost"]
    if inputs is not None:
        argv += ["-cert", str(inputs.client_cert), "-key", str(inputs.client_key)]
    req = f"GET {PATH} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    proc = subprocess.run(argv, input=req, capture_output=True, timeout=20, check=False)
    first = proc.stdout.split(b"\r\n", 1)[0].decode(errors="replace")
    return first, proc.stderr.decode(errors="replace").strip()[-200:]


def check_s_client(server: RunningServer, inputs: Inputs) -> dict[str, Any]:
    """The certificate s_time presents (-cert/-key) is accepted, and the
    server answers no 200 without one (s_time cannot tell: in TLS 1.3 the
    client finishes its handshake before the server checks its certificate)."""
    port = server.ports["https"]
    with_cert, err = s_client_get(port, inputs)
    if not with_cert.startswith("HTTP/1.1 200"):
        raise WorkloadError(f"openssl s_client -cert: {with_cert or 'no response'} ({err})")
    without, _ = s_client_get(port, None)
    if without.startswith("HTTP/1.1 200"):
        raise WorkloadError(f"{server.name} served {PATH} to openssl s_client without a certificate")
    return {"with_cert": with_cert, "without_cert": without or "no response"}


# --------------------------------------------------------------------------
# Measurements


def shim_env(inputs: Inputs) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "LD_PRELOAD": str(inputs.shim),
            "BENCH_CLIENT_CERT": str(inputs.client_cert),
            "BENCH_CLIENT_KEY": str(inputs.client_key),
        }
    )
    return env


@dataclass
class Measurement:
    values: dict[str, float]
    detail: dict[str, Any]


def _check_wrk(result: dict[str, Any]) -> None:
    if result["non_2xx"]:
        raise WorkloadError(f"{result['non_2xx']} non-2xx/3xx responses of {result.get('requests', 0)}")
    requests = result.get("requests", 0)
    if requests == 0:
        raise WorkloadError("wrk completed 0 requests")
    errors = sum(v for k, v in result["socket_errors"].items() if k != "timeout")
    if errors > 0.01 * requests:
        raise WorkloadError(f"socket errors {result['socket_errors']} for {requests} requests")


def measure_wrk(
    server: RunningServer,
    inputs: Inputs,
    duration: float,
    *,
    distinct: bool,
    policy: bool,
) -> Measurement:
    headers = {"Authorization": f"Bearer {inputs.repeated_token}"}
    checks: dict[str, Any] = {"no_cert": check_cert_required(server, headers)}
    if policy:
        checks["token"] = check_token_required(server, inputs)
    _preflight(server, "https", PATH)  # with certificate and the probe token
    url = server.url("https", PATH)
    env = shim_env(inputs)
    if distinct:
        warm_args: list[str] = ["-s", str(inputs.lua)]
        run_args: list[str] = ["-s", str(inputs.lua)]
        warm_script, run_script = [str(inputs.warm_tokens)], [str(inputs.tokens)]
    else:
        warm_args = run_args = ["-H", f"Authorization: Bearer {inputs.repeated_token}"]
        warm_script = run_script = []
    warm = _wrk(url, WARMUP_SECONDS, WRK_CONNECTIONS, extra_args=warm_args, script_args=warm_script, env=env)
    _check_wrk(warm)
    server.check_alive()
    with ServerCpu(server) as cpu:
        result = _wrk(url, duration, WRK_CONNECTIONS, extra_args=run_args, script_args=run_script, env=env)
    server.check_alive()
    result.update(cpu.detail())
    result["checks"] = checks
    _check_wrk(result)
    values = {"req_per_s": result["requests_per_sec"]}
    if cpu.cpu_seconds > 0:
        values["req_per_server_cpu_s"] = result["requests"] / cpu.cpu_seconds
        result["server_cpu_us_per_req"] = 1e6 * cpu.cpu_seconds / result["requests"]
    if distinct:
        script = result.get("script", {})
        used, loaded = int(script.get("tokens_used", -1)), int(script.get("tokens_loaded", -1))
        if used < 0 or loaded != inputs.token_count:
            raise WorkloadError(f"token script did not report (got {script})")
        result["tokens_repeated"] = max(0, used - loaded)
        if used > loaded:
            raise WorkloadError(
                f"{used:,} requests sent but only {loaded:,} distinct tokens: {used - loaded:,} repeats "
                "(raise --tokens)"
            )
    _preflight(server, "https", PATH)
    return Measurement(values, result)


def measure_handshakes(server: RunningServer, inputs: Inputs, duration: float) -> Measurement:
    checks = {"no_cert": check_cert_required(server, {}), "s_client": check_s_client(server, inputs)}
    port = server.ports["https"]
    args = ["-cert", str(inputs.client_cert), "-key", str(inputs.client_key)]
    _s_time(port, WARMUP_SECONDS, extra_args=args)
    server.check_alive()
    with ServerCpu(server) as cpu:
        result = _s_time(port, max(1, round(duration)), extra_args=args)
    server.check_alive()
    result.update(cpu.detail())
    result["checks"] = checks
    values = {"conn_per_s": result["connections_per_real_sec"]}
    if cpu.cpu_seconds > 0:
        values["conn_per_server_cpu_s"] = result["connections"] / cpu.cpu_seconds
    # Still serving with the certificate after thousands of handshakes.
    _preflight(server, "https", PATH)
    return Measurement(values, result)


@dataclass(frozen=True)
class Cell:
    name: str
    server: Callable[[Servers], Server]
    measure: Callable[[RunningServer, Inputs, float], Measurement]
    tools: tuple[str, ...]
    description: str


CELL_SPECS: dict[str, Cell] = {
    c.name: c
    for c in (
        Cell(
            "noauth",
            lambda s: s.noauth,
            lambda r, i, d: measure_wrk(r, i, d, distinct=False, policy=False),
            ("wrk",),
            "edgeward mTLS required, no [policy]; wrk -t1 -c64 GET /1k.bin, client cert via shim, "
            "same Authorization header as auth_repeated",
        ),
        Cell(
            "auth_repeated",
            lambda s: s.policy,
            lambda r, i, d: measure_wrk(r, i, d, distinct=False, policy=True),
            ("wrk",),
            "edgeward mTLS required + [policy] rule (client_cert, JWT ES256, RBAC); one repeated token",
        ),
        Cell(
            "auth_distinct",
            lambda s: s.policy,
            lambda r, i, d: measure_wrk(r, i, d, distinct=True, policy=True),
            ("wrk",),
            "same policy server; a different valid token per request (wrk Lua script), every request a signature check",
        ),
        Cell(
            "mtls_hs_edgeward",
            lambda s: s.noauth,
            measure_handshakes,
            ("openssl",),
            "openssl s_time -new -cert -key against edgeward client_auth=required",
        ),
        Cell(
            "mtls_hs_edgeward_nt",
            lambda s: s.noauth_nt,
            measure_handshakes,
            ("openssl",),
            "as mtls_hs_edgeward with session_tickets = false, the nginx cell's resumption setting",
        ),
        Cell(
            "mtls_hs_nginx",
            lambda s: s.nginx,
            measure_handshakes,
            ("openssl",),
            "openssl s_time -new -cert -key against nginx ssl_verify_client on",
        ),
    )
}


# --------------------------------------------------------------------------
# Self-test of the shim


def shim_selftest(servers: Servers, inputs: Inputs) -> dict[str, Any]:
    """Prove the shim works before any number is taken: against nginx with
    ``ssl_verify_client on``, wrk without the shim gets no 2xx (nginx answers
    400 "No required SSL certificate was sent"), with it only 2xx."""
    url_result: dict[str, Any] = {}
    with servers.nginx.start("https") as running:
        url = running.url("https", PATH)
        plain = _wrk(url, 1, 4)
        ok_plain = plain.get("requests", 0) - plain["non_2xx"]
        if ok_plain > 0:
            raise SystemExit(f"shim self-test: nginx-mtls served {ok_plain} requests to wrk without a certificate")
        shimmed = _wrk(url, 1, 4, env=shim_env(inputs))
        _check_wrk(shimmed)
        url_result["nginx"] = {
            "without_shim": {"requests": plain.get("requests", 0), "non_2xx": plain["non_2xx"]},
            "with_shim": {"requests": shimmed["requests"], "non_2xx": shimmed["non_2xx"]},
        }
    log(f"shim self-test passed: {url_result['nginx']}")
    return url_result


def edgeward_selftest(servers: Servers, inputs: Inputs) -> dict[str, Any]:
    """Same against edgeward (no policy): without the shim the handshake is
    refused, so wrk completes no request at all."""
    with servers.noauth.start("https") as running:
        url = running.url("https", PATH)
        plain = _wrk(url, 1, 4)
        ok_plain = plain.get("requests", 0) - plain["non_2xx"]
        if ok_plain > 0:
            raise WorkloadError(f"edgeward served {ok_plain} requests to wrk without a client certificate")
        shimmed = _wrk(url, 1, 4, env=shim_env(inputs))
        _check_wrk(shimmed)
        return {
            "without_shim": {
                "requests": plain.get("requests", 0),
                "non_2xx": plain["non_2xx"],
                "socket_errors": plain["socket_errors"],
            },
            "with_shim": {"requests": shimmed["requests"], "non_2xx": shimmed["non_2xx"]},
        }


# --------------------------------------------------------------------------
# Results


def summary(results: dict[str, CellResult]) -> dict[str, Any]:
    """Ratios, targets and derived numbers from the medians."""
    out: dict[str, Any] = {"targets": [], "derived": {}}
    r = ratio(results, "auth_repeated", "noauth", "req_per_s")
    bound = results["noauth"].saturated("client_cpu_util") or results["auth_repeated"].saturated("client_cpu_util")
    out["targets"].append(
        {
            "name": "auth_repeated / noauth, req/s",
            "ratio": r,
            "per_round": paired_ratios(results, "auth_repeated", "noauth", "req_per_s"),
            "target": REPEATED_TARGET,
            "status": _status(r, REPEATED_TARGET, "inconclusive: client-bound" if bound else None),
            "judged": True,
        }
    )
    rc = ratio(results, "auth_repeated", "noauth", "req_per_server_cpu_s")
    out["targets"].append(
        {
            "name": "auth_repeated / noauth, req per server CPU-s",
            "ratio": rc,
            "per_round": paired_ratios(results, "auth_repeated", "noauth", "req_per_server_cpu_s"),
            "target": REPEATED_TARGET,
            "status": _status(rc, REPEATED_TARGET),
            "judged": False,
        }
    )
    for cell, label in (("mtls_hs_edgeward", "tickets on"), ("mtls_hs_edgeward_nt", "tickets off like nginx")):
        for metric, judged in (("conn_per_server_cpu_s", True), ("conn_per_s", False)):
            hr = ratio(results, cell, "mtls_hs_nginx", metric)
            out["targets"].append(
                {
                    "name": f"mTLS handshakes edgeward ({label}) / nginx, {metric}",
                    "ratio": hr,
                    "per_round": paired_ratios(results, cell, "mtls_hs_nginx", metric),
                    "target": HANDSHAKE_TARGET,
                    "status": _status(hr, HANDSHAKE_TARGET),
                    "judged": judged,
                }
            )
    d = out["derived"]
    d["auth_distinct_over_noauth"] = ratio(results, "auth_distinct", "noauth", "req_per_s")
    d["auth_distinct_over_auth_repeated"] = ratio(results, "auth_distinct", "auth_repeated", "req_per_s")
    distinct_cpu = results["auth_distinct"].median("req_per_server_cpu_s")
    repeated_cpu = results["auth_repeated"].median("req_per_server_cpu_s")
    noauth_cpu = results["noauth"].median("req_per_server_cpu_s")
    d["signature_checks_per_core_s"] = distinct_cpu
    if distinct_cpu and repeated_cpu and distinct_cpu < repeated_cpu:
        marginal = 1 / distinct_cpu - 1 / repeated_cpu
        d["signature_check_marginal_us"] = marginal * 1e6
        d["signature_checks_per_core_s_marginal"] = 1 / marginal
    if repeated_cpu and noauth_cpu:
        d["policy_cost_us_per_request_repeated"] = (1 / repeated_cpu - 1 / noauth_cpu) * 1e6
    return out


def _status(r: float | None, target: float, override: str | None = None) -> str:
    if r is None:
        return "no data"
    if override and r < target:
        return override
    return "met" if r >= target else "missed"


METRIC_UNITS = {
    "req_per_s": "req/s",
    "req_per_server_cpu_s": "req/CPU-s",
    "conn_per_s": "conn/s",
    "conn_per_server_cpu_s": "conn/CPU-s",
}


def render_markdown(results: dict[str, CellResult], meta: dict[str, Any], summ: dict[str, Any]) -> str:
    lines = [
        f"`bench/policy.py --rounds {meta['rounds']} --duration {meta['duration']:g}` ({meta['date']}, "
        f"{meta['cpu']}, git {meta['git_rev']}): edgeward one worker on CPU {SERVER_CPU}, load generator on "
        f"CPU {CLIENT_CPU}; {meta['rounds']} interleaved rounds, fresh server per cell, medians. "
        f"All cells present a client certificate (ECDSA P-256, from a per-run client CA; wrk via the "
        f'`bench/clientcert.c` LD_PRELOAD shim); the edgeward listener has `client_auth = "required"` in '
        f"every cell, so the auth cells differ from `noauth` only by the `[policy]` table.",
    ]
    if meta.get("busy_before") or meta.get("busy_during"):
        shown = ", ".join(
            dict.fromkeys(
                f"{b['cell']} r{b['round']}" for b in [*meta.get("busy_before", []), *meta.get("busy_during", [])]
            )
        )
        lines += ["", f"**Warning:** foreign CPU load before/during: {shown} (see the JSON)."]
    if meta.get("discarded"):
        shown = ", ".join(f"{b['cell']} r{b['round']}" for b in meta["discarded"])
        lines += [
            "",
            f"{len(meta['discarded'])} measurement(s) shared the cores with foreign load and were discarded "
            f"for another attempt ({shown}; values in `meta.discarded` of the JSON).",
        ]
    lines += [
        "",
        "| cell | req/s or conn/s | per server CPU-s | server CPU | client CPU | rounds |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in meta["cells"]:
        c = results[name]
        primary = "conn_per_s" if name.startswith("mtls_hs") else "req_per_s"
        per_cpu = "conn_per_server_cpu_s" if name.startswith("mtls_hs") else "req_per_server_cpu_s"
        med, medc = c.median(primary), c.median(per_cpu)
        srv, cli = c.util("server_cpu_util"), c.util("client_cpu_util")
        rounds = ", ".join(f"{v:,.0f}" for v in c.values.get(primary, []))
        if c.errors:
            rounds += f" ({len(c.errors)} ERR)"
        lines.append(f"| {name} | {_f(med)} | {_f(medc)} | {_f(srv, 2)} | {_f(cli, 2)} | {rounds} |")
    lines += [
        "",
        "| target | ratio of medians | per-round ratios | target | status |",
        "|---|---:|---|---:|---|",
    ]
    for t in summ["targets"]:
        name = t["name"] + ("" if t["judged"] else " (reported)")
        r = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
        rounds = ", ".join(f"{x:.2f}" for x in t.get("per_round", []))
        lines.append(f"| {name} | {r} | {rounds} | ≥ {t['target']:g} | {t['status'] if t['judged'] else '—'} |")
    d = summ["derived"]
    lines.append("")
    if d.get("signature_checks_per_core_s"):
        text = (
            f"Distinct token per request: {_f(results['auth_distinct'].median('req_per_s'))} req/s, "
            f"{_f(d['signature_checks_per_core_s'])} signature checks per server CPU-second "
            "(every request a cache miss, TLS and HTTP included)"
        )
        if d.get("signature_check_marginal_us"):
            text += (
                f"; the check's marginal cost over the repeated-token cell is "
                f"{d['signature_check_marginal_us']:.0f} µs of server CPU, i.e. "
                f"{_f(d['signature_checks_per_core_s_marginal'])} checks/s per core on their own"
            )
        tokens = [dd.get("script", {}).get("tokens_used") for dd in results["auth_distinct"].details]
        text += (
            f". Tokens used per measured run: {', '.join(str(t) for t in tokens)} of "
            f"{meta['tokens']:,} distinct (0 repeats)."
        )
        lines.append(text)
    cost = d.get("policy_cost_us_per_request_repeated")
    if cost is not None:
        text = f"Policy cost with a cached token: {cost:.1f} µs of server CPU per request over `noauth`"
        if cost <= 0:
            text += " (the policy cell used no more CPU per request than `noauth`: below this run's noise)"
        lines += ["", text + "."]
    lines += [
        "",
        "The handshake target is judged on handshakes per server CPU-second: `s_time` makes one "
        "connection at a time, so its wall-clock rate is bounded by the client's own handshake CPU and the "
        "round trip (the server is well below one core busy); the wall-clock ratio is shown too.",
    ]
    errs = [(n, e) for n in meta["cells"] for e in results[n].errors]
    if errs:
        lines += ["", "Errors:", ""]
        lines += [f"- {n}: {e.splitlines()[0][:300]}" for n, e in errs]
    return "\n".join(lines) + "\n"


def _f(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


# --------------------------------------------------------------------------
# Orchestration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measurement (after a 1 s warm-up)")
    p.add_argument("--cells", default="", help=f"comma list of cells (default all: {','.join(CELLS)})")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="distinct tokens for auth_distinct")
    p.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "policy.json")
    p.add_argument("--ingress", type=Path, default=DEFAULT_INGRESS)
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        metavar="S",
        help="before each start wait up to S seconds for foreign CPU load to stop (0 = just warn)",
    )
    p.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        metavar="N",
        help="measure a cell again, up to N times, when foreign CPU load shared the cores during it; "
        "if every attempt was disturbed the least disturbed one is kept with a warning (the others "
        "stay in the JSON as discarded)",
    )
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] or list(CELLS)
    bad = [c for c in cells if c not in CELL_SPECS]
    if bad:
        p.error(f"unknown cell(s) {bad}; known: {list(CELLS)}")
    args.cells = [c for c in CELLS if c in cells]
    if args.rounds < 1 or args.duration < 1 or args.tokens < 1000:
        p.error("--rounds and --duration must be >= 1, --tokens >= 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    for tool in ("taskset", "wrk", "openssl", "nginx"):
        if shutil.which(tool) is None and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            raise SystemExit(f"{tool} is required")
    pinned = pin_self_to_client_cpu()
    nofile = raise_nofile()
    with scratch_dir("edgeward-policy-bench-", args.keep_workdir) as workdir:
        www = workdir / "www"
        make_www(www)
        certs = make_certs(workdir / "tls")
        inputs = make_inputs(workdir, args.tokens)
        env = BenchEnv(
            server_cpu=SERVER_CPU,
            workdir=workdir,
            www=www,
            certs=certs,
            bench_dir=BENCH_DIR,
            peers_venv=BENCH_DIR / ".venv-peers",
            ingress_bin=args.ingress,
            client_cert=inputs.client_cert,
            client_key=inputs.client_key,
            probe_headers=(("Authorization", f"Bearer {inputs.probe_token}"),),
        )
        servers = make_servers(env, inputs)
        meta: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python", "bench/policy.py", *(argv if argv is not None else sys.argv[1:])]),
            "rounds": args.rounds,
            "duration": args.duration,
            "tokens": args.tokens,
            "warm_tokens": WARM_TOKENS,
            "cells": args.cells,
            "cell_descriptions": {c: CELL_SPECS[c].description for c in args.cells},
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "git_rev": git_rev(),
            "pinned": {"server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU if pinned else None},
            "rlimit_nofile": list(nofile),
            "versions": {
                "edgeward": servers.noauth.version(),
                "nginx": servers.nginx.version(),
                "wrk": _first_line(["wrk", "--version"]),
                "openssl": _first_line(["openssl", "version"]),
                "pyjwt": jwt.__version__,
                "python (harness)": platform.python_version(),
            },
            "configs": {
                "edgeward_tls_extra": tls_client_auth(inputs),
                "edgeward_policy": policy_table(inputs),
                "nginx_tls_extra": servers.nginx.tls_server_extra,
            },
            "busy_before": [],
            "busy_during": [],
            "discarded": [],
            "commands": {},
        }
        for name, version in meta["versions"].items():
            log(f"  {name}: {version}")
        meta["selftest"] = {"shim": shim_selftest(servers, inputs)}
        try:
            meta["selftest"]["edgeward"] = edgeward_selftest(servers, inputs)
            log(f"edgeward self-test passed: {meta['selftest']['edgeward']}")
        except (ServerError, WorkloadError, OSError, subprocess.SubprocessError) as exc:
            meta["selftest"]["edgeward"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"edgeward self-test FAILED: {str(exc).splitlines()[0][:300]}")

        results = {name: CellResult() for name in args.cells}
        total, n, t0 = args.rounds * len(args.cells), 0, time.monotonic()
        for rnd in range(1, args.rounds + 1):
            for name in args.cells:
                n += 1
                prefix = f"[{n}/{total}] round {rnd} {name:<17}"
                noisy_attempts: list[Measurement] = []
                clean = False
                for attempt in range(args.retry_noisy + 1):
                    m, noisy = run_cell(name, rnd, prefix, servers, inputs, args, meta, results[name])
                    if m is None:  # an error, recorded
                        break
                    if not noisy:
                        record(results[name], m)
                        clean = True
                        break
                    noisy_attempts.append(m)
                    if attempt < args.retry_noisy:
                        log(f"{prefix} foreign load during the measurement: measuring again")
                if noisy_attempts and not clean:
                    # Every attempt shared the cores: keep the least disturbed one.
                    best = min(noisy_attempts, key=lambda a: a.detail["foreign_cpu_util"])
                    record(results[name], best)
                    meta["busy_during"].append(
                        {"round": rnd, "cell": name, "foreign_cpu": best.detail["foreign_cpu_util"]}
                    )
                    log(f"{prefix} kept the least disturbed attempt: {best.values}")
                    noisy_attempts.remove(best)
                for a in noisy_attempts:
                    meta["discarded"].append({"round": rnd, "cell": name, "values": a.values, "detail": a.detail})
        meta["elapsed_seconds"] = round(time.monotonic() - t0, 1)

        summ = summary(results) if set(CELLS) <= set(args.cells) else {"targets": [], "derived": {}}
        markdown = render_markdown(results, meta, summ)
        print(markdown)
        out = {
            "meta": meta,
            "cells": {
                name: c.as_json(METRIC_UNITS, ("client_bound", "client_cpu_util"), ()) for name, c in results.items()
            },
            **summ,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


def run_cell(
    name: str,
    rnd: int,
    prefix: str,
    servers: Servers,
    inputs: Inputs,
    args: argparse.Namespace,
    meta: dict[str, Any],
    result: CellResult,
) -> tuple[Measurement | None, bool]:
    """Start, check and measure one cell once. Returns (measurement, noisy),
    noisy = foreign CPU load shared the cores during the measurement; the
    caller decides what to keep. An error is recorded in *result* and
    returns (None, False)."""
    spec = CELL_SPECS[name]
    busy = wait_quiet(args.wait_quiet)
    if max(busy.values(), default=0.0) > BUSY_THRESHOLD:
        meta["busy_before"].append({"round": rnd, "cell": name, "core_busy": busy})
        log(f"{prefix} warning: machine busy before start {busy}")
    server = spec.server(servers)
    mode: Mode = "https"
    try:
        with server.start(mode) as running:
            meta["commands"][server.name] = " ".join(map(str, running.argv))
            m = spec.measure(running, inputs, args.duration)
    except (ServerError, WorkloadError, OSError, subprocess.SubprocessError) as exc:
        err = f"{type(exc).__name__}: {exc}"
        result.errors.append(err)
        log(f"{prefix} ERROR {err.splitlines()[0][:300]}")
        return None, False
    m.detail["round"] = rnd
    foreign = foreign_load(m.detail)
    noisy = foreign is not None and foreign > FOREIGN_THRESHOLD
    m.detail["foreign_cpu_util"] = foreign
    shown = ", ".join(f"{k}={v:,.0f}" for k, v in m.values.items())
    shown += f" (server cpu {m.detail['server_cpu_util']:.2f}, client cpu {m.detail['client_cpu_util']:.2f})"
    if noisy:
        shown += f" warning: foreign load {foreign:.2f} CPU"
    log(f"{prefix} {shown}")
    return m, noisy


def record(result: CellResult, m: Measurement) -> None:
    for metric, value in m.values.items():
        result.values.setdefault(metric, []).append(value)
    result.details.append(m.detail)


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
