"""The SNI certificate store and its hot reload.

The listener's base context calls `select` during each handshake and
points the connection at the context for its server name. Reloading builds
new contexts and swaps one dict, so new handshakes see new certificates
while connections already established keep theirs.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from cryptography import x509

from ingress.config.model import CertPair, TLSSettings
from ingress.errors import TLSMaterialError
from ingress.tls.contexts import leaf_context
from ingress.tls.identity import ClientTrust
from ingress.tls.material import CertInfo, PrivateKey, load_ca_bundle, load_pair

log = logging.getLogger("edgeward.tls")

_Stamp = tuple[tuple[int, int, int], tuple[int, int, int]]
# The stamp of files that cannot be stat'ed, so a missing file is refused (and logged) once, not on every poll.
_UNREADABLE: _Stamp = ((-1, -1, -1), (-1, -1, -1))


def _stamp(pair: CertPair) -> _Stamp:
    a, b = os.stat(pair.cert), os.stat(pair.key)
    return (a.st_ino, a.st_size, a.st_mtime_ns), (b.st_ino, b.st_size, b.st_mtime_ns)


@dataclass
class _Slot:
    pair: CertPair
    names: tuple[str, ...]
    context: ssl.SSLContext
    stamp: _Stamp
    material: CertInfo
    refused: _Stamp | None = None


class CertStore:
    """Certificates of one listener, looked up by server name."""

    def __init__(self, listener: str, settings: TLSSettings) -> None:
        self.listener = listener
        self.settings = settings
        self.slots = [self._load(pair) for pair in settings.certs]
        # QUIC verifies client chains against these; TCP's contexts load the same files (policy_context).
        self.client_auth = settings.client_auth
        self.client_trust: ClientTrust | None = None
        if settings.client_auth != "off":
            self.client_trust = ClientTrust([ca for path in settings.client_ca for ca in load_ca_bundle(path)])
        self.reloads = 0
        self.refusals = 0
        self._index()

    def _load(self, pair: CertPair) -> _Slot:
        stamp = _stamp(pair)
        info = load_pair(pair.cert, pair.key)
        ctx = leaf_context(self.settings, pair)
        return _Slot(pair, pair.names or info.names, ctx, stamp, info)

    def _index(self) -> None:
        exact: dict[str, _Slot] = {}
        wildcard: dict[str, _Slot] = {}
        for slot in self.slots:
            for name in slot.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[1:], slot)
                else:
                    exact.setdefault(name, slot)
        self._exact, self._wildcard, self._default = exact, wildcard, self.slots[0]

    def _slot(self, server_name: str | None) -> _Slot:
        if server_name:
            name = server_name.lower()
            slot = self._exact.get(name)
            if slot is not None:
                return slot
            dot = name.find(".")
            if dot > 0:
                slot = self._wildcard.get(name[dot:])
                if slot is not None:
                    return slot
        return self._default

    def lookup(self, server_name: str | None) -> ssl.SSLContext:
        return self._slot(server_name).context

    def quic_pair(self, server_name: str | None) -> tuple[tuple[x509.Certificate, ...], PrivateKey]:
        """The chain and key for a QUIC handshake, which has no SSLContext to switch."""
        material = self._slot(server_name).material
        return material.chain, material.key

    def select(self, sslobj: ssl.SSLObject, server_name: str | None, current: ssl.SSLContext) -> None:
        """sni_callback: runs inside the handshake, so it only does dict lookups."""
        ctx = self.lookup(server_name)
        if ctx is not current:
            sslobj.context = ctx

    def poll(self) -> None:
        """Reload any certificate whose files changed; keep the old one if the new is bad."""
        changed = False
        for i, slot in enumerate(self.slots):
            try:
                stamp = _stamp(slot.pair)
            except OSError as exc:
                self._refuse(slot, _UNREADABLE, f"cannot stat {exc.filename}: {exc.strerror}")
                continue
            if stamp in (slot.stamp, slot.refused):
                continue
            try:
                fresh = self._load(slot.pair)
            except (TLSMaterialError, ssl.SSLError, OSError) as exc:
                self._refuse(slot, stamp, str(exc))
                continue
            self.slots[i] = fresh
            changed = True
            self.reloads += 1
            log.info(
                "certificate reloaded",
                extra={
                    "event": "tls.cert_reloaded",
                    "listener": self.listener,
                    "cert": slot.pair.cert,
                },
            )
        if changed:
            self._index()

    def _refuse(self, slot: _Slot, stamp: _Stamp, reason: str) -> None:
        if stamp == slot.refused:
            return
        slot.refused = stamp
        self.refusals += 1
        log.warning(
            "new certificate refused; still serving the previous one: %s",
            reason,
            extra={"event": "tls.cert_refused", "listener": self.listener, "cert": slot.pair.cert},
        )
