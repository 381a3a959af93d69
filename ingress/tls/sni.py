"""The SNI certificate store and its hot reload.

The listener's base context calls `select` during each handshake and
points the connection at the context for its server name. Reloading builds
new contexts and swaps one dict, so new handshakes see new certificates
while connections already established keep theirs.

Client CAs and CRLs reload the same way: when one of their files changes,
every certificate's context is rebuilt around the new set (OpenSSL
verifies client certificates against the store of the context SNI moved
the connection to, see contexts.policy_context), and QUIC's ClientTrust is
replaced with it. A set that does not load is refused whole, and the
previous one stays in force.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from dataclasses import dataclass

from cryptography import x509

from ingress.config.model import CertPair, TLSSettings
from ingress.errors import TLSMaterialError
from ingress.tls.contexts import serving_context
from ingress.tls.identity import ClientTrust
from ingress.tls.material import CertInfo, PrivateKey, load_client_material, load_pair

log = logging.getLogger("edgeward.tls")

_Stamp = tuple[tuple[int, int, int], tuple[int, int, int]]
# The stamp of files that cannot be stat'ed, so a missing file is refused (and logged) once, not on every poll.
_UNREADABLE: _Stamp = ((-1, -1, -1), (-1, -1, -1))


def _stamp(pair: CertPair) -> _Stamp:
    a, b = os.stat(pair.cert), os.stat(pair.key)
    return (a.st_ino, a.st_size, a.st_mtime_ns), (b.st_ino, b.st_size, b.st_mtime_ns)


_FilesStamp = tuple[tuple[int, int, int], ...]
_FILES_UNREADABLE: _FilesStamp = ((-1, -1, -1),)


def _files_stamp(paths: tuple[str, ...]) -> _FilesStamp:
    stats = [os.stat(path) for path in paths]
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


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
        # Client CAs and CRLs: QUIC verifies client chains against client_trust, and every
        # certificate's context is built around the same objects, so TCP trusts the same set.
        self.client_auth = settings.client_auth
        self.client_trust: ClientTrust | None = None
        self._client_files = settings.client_ca + settings.client_crl if settings.client_auth != "off" else ()
        self._client_stamp: _FilesStamp = ()
        self._client_refused: _FilesStamp | None = None
        self._stale_crls: frozenset[str] = frozenset()
        self._ever_trusted: frozenset[str] = frozenset()  # subjects of every client CA loaded: see ClientTrust.retired
        if self._client_files:
            self._client_stamp = _files_stamp(self._client_files)
            self._trust(self._load_trust())
        self.slots = [self._load(pair) for pair in settings.certs]
        self.reloads = 0
        self.refusals = 0
        self.trust_reloads = 0
        self.trust_refusals = 0
        self._index()

    def _load_trust(self) -> ClientTrust:
        material = load_client_material(self.settings.client_ca, self.settings.client_crl)
        return ClientTrust(material.cas, material.crls, retired=self._ever_trusted)

    def _trust(self, trust: ClientTrust) -> None:
        self.client_trust = trust
        self._ever_trusted |= {ca.subject.rfc4514_string() for ca in trust.cas}

    def _load(self, pair: CertPair) -> _Slot:
        stamp = _stamp(pair)
        info = load_pair(pair.cert, pair.key)
        ctx = serving_context(self.settings, info, self.client_trust)
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

    def poll(self, now: dt.datetime | None = None) -> None:
        """Reload client CAs and CRLs, and any certificate, whose files changed; keep the old if the new is bad."""
        self._poll_trust(now or dt.datetime.now(dt.UTC))
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

    def _poll_trust(self, now: dt.datetime) -> None:
        if not self._client_files:
            return
        try:
            stamp = _files_stamp(self._client_files)
        except OSError as exc:
            self._refuse_trust(_FILES_UNREADABLE, f"cannot stat {exc.filename}: {exc.strerror}")
            return
        if stamp not in (self._client_stamp, self._client_refused):
            self._reload_trust(stamp)
        self._warn_stale(now)

    def _reload_trust(self, stamp: _FilesStamp) -> None:
        """Build the new trust and every context around it first; swap only if all of it loaded."""
        try:
            trust = self._load_trust()
            contexts = [serving_context(self.settings, slot.material, trust) for slot in self.slots]
        except (TLSMaterialError, ssl.SSLError, OSError) as exc:
            self._refuse_trust(stamp, str(exc))
            return
        # One loop turn: no handshake can run between these assignments and see half of each.
        self._trust(trust)
        for slot, ctx in zip(self.slots, contexts, strict=True):
            slot.context = ctx
        self._client_stamp, self._client_refused = stamp, None
        self.trust_reloads += 1
        log.info(
            "client CAs and CRLs reloaded",
            extra={
                "event": "tls.client_trust_reloaded",
                "listener": self.listener,
                "cas": len(trust.cas),
                "crls": len(trust.crls),
            },
        )

    def _refuse_trust(self, stamp: _FilesStamp, reason: str) -> None:
        if stamp == self._client_refused:
            return
        self._client_refused = stamp
        self.trust_refusals += 1
        log.warning(
            "new client CAs or CRLs refused; still verifying clients against the previous ones: %s",
            reason,
            extra={"event": "tls.client_trust_refused", "listener": self.listener},
        )

    def _warn_stale(self, now: dt.datetime) -> None:
        """Say once when a CA's CRL has expired: from then on every client certificate it issued is refused."""
        revocations = self.client_trust.revocations if self.client_trust is not None else None
        if revocations is None or revocations.next_update is None or now < revocations.next_update:
            stale: frozenset[str] = frozenset()
        else:
            stale = frozenset(revocations.stale(now))
        for ca in sorted(stale - self._stale_crls):
            log.error(
                "the CRL of client CA %r has expired: every client certificate it issued is refused"
                " until a current CRL is installed",
                ca,
                extra={"event": "tls.client_crl_expired", "listener": self.listener, "ca": ca},
            )
        self._stale_crls = stale

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
