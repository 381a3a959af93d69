"""SHA256SUMS: strict parsing, and the check that it, its signed statement and the directory agree."""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Any

from audit.digest import sha256_bytes, sha256_file
from audit.errors import Finding
from audit.sign.dsse import loads_strict
from audit.sign.names import RELEASE_FILE_NAME, SUMS_NAME, SUMS_PREDICATE_TYPE
from audit.verify.oneline import oneline
from audit.verify.provenance import STATEMENT_TYPE

# `<sha256>  <name>` with the file-name rule the signer applies (audit.sign.names.RELEASE_FILE_NAME).
_LINE = re.compile(rf"([0-9a-f]{{64}})  ({RELEASE_FILE_NAME.pattern})")


def parse_sums(data: bytes) -> dict[str, str]:
    """name -> hex; only what `audit release` writes: lowercase hex, two spaces, plain names, LF endings."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Finding(f"{SUMS_NAME}: not UTF-8") from exc
    if not text.endswith("\n"):
        raise Finding(f"{SUMS_NAME}: does not end with a newline")
    entries: dict[str, str] = {}
    for number, line in enumerate(text[:-1].split("\n"), start=1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise Finding(f"{SUMS_NAME}: line {number} is not '<sha256>  <name>'")
        digest, name = match.groups()
        if name in entries:
            raise Finding(f"{SUMS_NAME}: {name} is listed twice")
        entries[name] = digest
    return entries


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def check_statement(statement_bytes: bytes, sums: bytes, entries: dict[str, str], what: str) -> None:
    """The signed statement must list exactly SHA256SUMS's lines and bind SHA256SUMS's own bytes."""
    statement: Any = loads_strict(statement_bytes, what)
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise Finding(f"{what}: not an in-toto Statement v1")
    if statement.get("predicateType") != SUMS_PREDICATE_TYPE:
        raise Finding(f"{what}: predicateType is not {SUMS_PREDICATE_TYPE}")
    bound = _dig(statement, "predicate", "checksums", "digest", "sha256")
    actual = sha256_bytes(sums)
    if not isinstance(bound, str) or not hmac.compare_digest(bound.encode(), actual.encode()):
        raise Finding(f"{SUMS_NAME}: sha256 {actual} does not match the signed statement in {what}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list):
        raise Finding(f"{what}: subject is not a list")
    listed: dict[str, str] = {}
    for subject in subjects:
        name = _dig(subject, "name")
        digest = _dig(subject, "digest", "sha256")
        if not isinstance(name, str) or not isinstance(digest, str) or name in listed:
            raise Finding(f"{what}: malformed or duplicate subject")
        listed[name] = digest
    for name in sorted(set(listed) ^ set(entries)):
        where = SUMS_NAME if name in entries else what
        raise Finding(f"{oneline(name)}: listed in {where} only")
    for name, digest in entries.items():
        if not hmac.compare_digest(listed[name].encode(), digest.encode()):
            raise Finding(f"{name}: sha256 in {SUMS_NAME} ({digest}) does not match {what} ({oneline(listed[name])})")


def check_directory(directory: Path, files: list[str], entries: dict[str, str], exempt: frozenset[str]) -> None:
    """Every file is listed, every listed file exists, every digest matches."""
    present = set(files) - exempt
    for name in sorted(present - set(entries)):
        raise Finding(f"{oneline(name)}: not listed in {SUMS_NAME}")
    for name in sorted(set(entries) - present):
        raise Finding(f"{name}: listed in {SUMS_NAME} but missing")
    for name in sorted(entries):
        actual = file_digest(directory / name)
        if not hmac.compare_digest(actual.encode(), entries[name].encode()):
            raise Finding(f"{name}: sha256 {actual} does not match {SUMS_NAME} ({entries[name]})")


def file_digest(path: Path) -> str:
    """Hex SHA-256 of a file; a file that cannot be read is a one-line Finding naming it, not a traceback."""
    try:
        return sha256_file(path)
    except OSError as exc:
        raise Finding(f"{oneline(path.name)}: cannot read ({exc.strerror})") from exc
