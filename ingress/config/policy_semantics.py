"""Cross-field rules of `[policy]`: names resolve, roles are declared, and every rule can be satisfied.

A rule that can never pass (a client certificate no listener asks for, a
subject-keyed limit on a rule without tokens) or a role that is only a
typo locks people out silently; both are config errors here instead.
Address lists (CIDRs) are checked with the other address rules in
`semantics`. No file is read here; key files are checked by `ingress check`.
"""

from __future__ import annotations

import re

from ingress.config.model import Config
from ingress.config.policy import JWTProvider, Policy, PolicyRule
from ingress.config.semantics import method_token, normalised_path, path_message, valid_host_pattern
from ingress.errors import Problem

_SYMMETRIC = ("HS256", "HS384", "HS512")


def _duplicates(names: list[str]) -> dict[int, int]:
    """Index of each repeated name to the index of its first use."""
    seen: dict[str, int] = {}
    out: dict[int, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            out[i] = seen[name]
        else:
            seen[name] = i
    return out


def policy_problems(config: Config) -> list[Problem]:
    src, policy = config.source, config.policy
    out: list[Problem] = []

    def add(path: str, message: str) -> None:
        out.append(Problem(src, path, message))

    for table, items in (("jwt", policy.jwt), ("rate_limits", policy.rate_limits), ("rules", policy.rules)):
        for i, first in _duplicates([item.name for item in items]).items():
            add(f"policy.{table}[{i}].name", f"duplicate name {items[i].name!r} (also policy.{table}[{first}])")
    roles = set(policy.roles)
    for i, first in _duplicates(list(policy.roles)).items():
        add(f"policy.roles[{i}]", f"role {policy.roles[i]!r} is listed twice (also policy.roles[{first}])")
    for i, provider in enumerate(policy.jwt):
        out.extend(_provider_problems(src, f"policy.jwt[{i}]", provider))
    limits = {limit.name: limit for limit in policy.rate_limits}
    for i, name in enumerate(policy.global_rate_limits):
        limit = limits.get(name)
        if limit is None:
            add(f"policy.global_rate_limits[{i}]", f"no rate limit named {name!r}; define it in [[policy.rate_limits]]")
        elif limit.key != "ip":
            add(
                f"policy.global_rate_limits[{i}]",
                f"{name!r} is keyed by {limit.key}, which is only known inside a rule; global limits are keyed by ip",
            )
    for i, mapping in enumerate(policy.identities):
        at = f"policy.identities[{i}]"
        if not (mapping.subject or mapping.spiffe_id or mapping.dns or mapping.email or mapping.fingerprint):
            add(at, "matches every certificate; set subject, spiffe_id, dns, email or fingerprint")
        out.extend(_unknown_roles(src, f"{at}.roles", mapping.roles, roles))
    asks_for_certs = [
        listener.name for listener in config.listeners if listener.tls is not None and listener.tls.client_auth != "off"
    ]
    for i, rule in enumerate(policy.rules):
        out.extend(_rule_problems(src, f"policy.rules[{i}]", rule, policy, roles, asks_for_certs))
    return out


def _provider_problems(src: str, at: str, provider: JWTProvider) -> list[Problem]:
    out: list[Problem] = []
    if not provider.keys and provider.jwks is None:
        out.append(Problem(src, f"{at}.keys", "no verification keys; add [[...keys]] entries or a jwks source"))
    if not provider.audiences:
        out.append(Problem(src, f"{at}.audiences", "list the audiences this edge accepts; an empty list accepts none"))
    kids = [key.kid for key in provider.keys]
    for j, first in _duplicates(kids).items():
        out.append(Problem(src, f"{at}.keys[{j}].kid", f"kid {kids[j]!r} is used twice (also keys[{first}])"))
    if len(provider.keys) > 1:
        for j, key in enumerate(provider.keys):
            if not key.kid:
                out.append(
                    Problem(src, f"{at}.keys[{j}].kid", "with more than one key, each needs the kid tokens name it by")
                )
    jwks = provider.jwks
    if jwks is not None:
        if bool(jwks.file) == bool(jwks.url):
            out.append(Problem(src, f"{at}.jwks", "set exactly one of file or url"))
        if not jwks.algorithms:
            out.append(Problem(src, f"{at}.jwks.algorithms", 'list the algorithms JWKS keys may use, e.g. ["ES256"]'))
        for j, alg in enumerate(jwks.algorithms):
            if alg in _SYMMETRIC:
                out.append(
                    Problem(
                        src,
                        f"{at}.jwks.algorithms[{j}]",
                        f"{alg} uses a shared secret, which a JWKS must never carry; configure it under keys",
                    )
                )
        if jwks.ca and not jwks.url:
            out.append(Problem(src, f"{at}.jwks.ca", "only used to verify a jwks url; remove it or set url"))
    if provider.cookie and not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", provider.cookie):
        out.append(Problem(src, f"{at}.cookie", f"{provider.cookie!r} is not a cookie name"))
    return out


def _rule_problems(
    src: str, at: str, rule: PolicyRule, policy: Policy, roles: set[str], asks_for_certs: list[str]
) -> list[Problem]:
    out: list[Problem] = []
    providers = {provider.name for provider in policy.jwt}
    limits = {limit.name: limit for limit in policy.rate_limits}
    if not normalised_path(rule.path):
        out.append(Problem(src, f"{at}.path", path_message(rule.path)))
    if not valid_host_pattern(rule.host.lower()):
        out.append(Problem(src, f"{at}.host", f"{rule.host!r} is not `*`, a DNS name or a *.domain wildcard"))
    if rule.jwt and rule.jwt not in providers:
        known = ", ".join(sorted(providers)) or "none defined"
        out.append(Problem(src, f"{at}.jwt", f"no JWT provider named {rule.jwt!r} (providers: {known})"))
    if rule.cert_bound and not (rule.jwt and rule.client_cert):
        out.append(
            Problem(
                src,
                f"{at}.cert_bound",
                "binds a token to a client certificate, so the rule needs both jwt and client_cert = true",
            )
        )
    if rule.client_cert and not asks_for_certs:
        out.append(
            Problem(
                src,
                f"{at}.client_cert",
                "no listener asks for client certificates, so this rule refuses everyone; set tls.client_auth ="
                ' "optional" or "required" on a listener',
            )
        )
    authenticates = rule.client_cert or bool(rule.jwt)
    if authenticates and not rule.grants:
        out.append(
            Problem(
                src,
                f"{at}.grants",
                "the rule authenticates but grants nothing, so every request would be refused (deny by default);"
                " add grants = [{ roles = [...] }] (empty roles: any authenticated client)",
            )
        )
    if rule.grants and not authenticates:
        out.append(
            Problem(
                src,
                f"{at}.grants",
                "grants need an authenticated client; set jwt or client_cert = true, or remove grants",
            )
        )
    for j, grant in enumerate(rule.grants):
        out.extend(_unknown_roles(src, f"{at}.grants[{j}].roles", grant.roles, roles))
        for k, method in enumerate(grant.methods):
            if not method_token(method):
                out.append(
                    Problem(src, f"{at}.grants[{j}].methods[{k}]", f"{method!r} is not an upper-case HTTP method")
                )
    for j, name in enumerate(rule.rate_limits):
        limit = limits.get(name)
        if limit is None:
            out.append(Problem(src, f"{at}.rate_limits[{j}]", f"no rate limit named {name!r}"))
        elif limit.key == "subject" and not rule.jwt:
            out.append(
                Problem(src, f"{at}.rate_limits[{j}]", f"{name!r} is keyed by token subject; the rule needs jwt")
            )
        elif limit.key == "client_cert" and not rule.client_cert:
            out.append(
                Problem(
                    src,
                    f"{at}.rate_limits[{j}]",
                    f"{name!r} is keyed by client certificate; the rule needs client_cert = true",
                )
            )
    return out


def _unknown_roles(src: str, at: str, named: tuple[str, ...], known: set[str]) -> list[Problem]:
    return [
        Problem(
            src,
            f"{at}[{k}]",
            f"unknown role {role!r}; declare it in policy.roles (known: {', '.join(sorted(known)) or 'none'})",
        )
        for k, role in enumerate(named)
        if role not in known
    ]
