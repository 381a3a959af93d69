"""Roles: where they come from (token claims, client certificates) and what they grant.

Roles from a token are extracted once per verified token (`jwt.Principal`);
roles from a client certificate once per certificate (memoised by its
fingerprint). A grant check is then set operations on frozensets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ingress.config.policy import Grant, IdentityRoles
from ingress.tls.identity import ClientIdentity

MEMO_SIZE = 4096
NO_ROLES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CompiledGrant:
    methods: frozenset[str]  # empty: every method
    roles: frozenset[str]
    require_all: bool

    def covers(self, method: str) -> bool:
        return not self.methods or method in self.methods

    def satisfied_by(self, roles: frozenset[str]) -> bool:
        if not self.roles:
            return True
        if self.require_all:
            return self.roles <= roles
        return not self.roles.isdisjoint(roles)


def compile_grants(grants: Sequence[Grant]) -> tuple[CompiledGrant, ...]:
    out = []
    for grant in grants:
        methods = set(grant.methods)
        if "GET" in methods:
            methods.add("HEAD")  # as routes do: whoever may GET may ask for the head of the same thing
        out.append(CompiledGrant(frozenset(methods), frozenset(grant.roles), grant.require == "all"))
    return tuple(out)


def grant_for(grants: tuple[CompiledGrant, ...], method: str) -> CompiledGrant | None:
    """The first grant covering `method`; None means the rule says nothing, so the request is refused."""
    for grant in grants:
        if grant.covers(method):
            return grant
    return None


class IdentityMapper:
    """Client certificate to roles, from `policy.identities`; every matching mapping adds its roles."""

    __slots__ = ("_mappings", "_memo")

    def __init__(self, mappings: Sequence[IdentityRoles]) -> None:
        self._mappings = tuple(mappings)
        self._memo: dict[str, frozenset[str]] = {}

    def roles(self, identity: ClientIdentity | None) -> frozenset[str]:
        if identity is None or not self._mappings:
            return NO_ROLES
        roles = self._memo.get(identity.sha256)
        if roles is None:
            found: set[str] = set()
            for mapping in self._mappings:
                if _matches(mapping, identity):
                    found.update(mapping.roles)
            roles = frozenset(found)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[identity.sha256] = roles
        return roles


def _matches(mapping: IdentityRoles, identity: ClientIdentity) -> bool:
    """Every criterion the mapping sets must hold (config semantics refuse a mapping that sets none)."""
    if mapping.subject and mapping.subject != identity.subject:
        return False
    if mapping.fingerprint and mapping.fingerprint.lower() != identity.sha256:
        return False
    if mapping.dns and mapping.dns.lower() not in (name.lower() for name in identity.dns_sans):
        return False
    if mapping.email and mapping.email.lower() not in (addr.lower() for addr in identity.email_sans):
        return False
    if mapping.spiffe_id:
        spiffe = identity.spiffe_id
        if spiffe is None:
            return False
        if mapping.spiffe_id.endswith("/*"):
            if not spiffe.startswith(mapping.spiffe_id[:-1]):
                return False
        elif spiffe != mapping.spiffe_id:
            return False
    return True
