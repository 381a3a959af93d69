"""Tamper detection of an evidence pack, measured exhaustively (issue 8): every single-byte flip of every
pack file and of the archive, plus every file added or removed, through the real verifier.

    .venv/bin/python bench/pack_tamper.py --pack PACK_DIR --archive PACK.tar.gz --key release.pub \
        --json bench/results/pack_tamper.json

The suite flips every byte of the small files and a stride of the large ones (a full sweep takes minutes);
this is the full sweep. Each flip XORs one byte with 0x01 and calls
`evidence.verify.check.verify_files` (or `verify_archive`) in memory. A flip counts as detected when the
verifier raises a Finding or reports the file as modified. Work is split over every CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit.errors import Finding
from audit.verify.keys import TrustedKeys
from evidence.verify.check import read_directory, verify_archive, verify_files

# Per worker process: the pack, the archive and the key, loaded once by the pool's initializer.
_STATE: dict[str, object] = {}


def _init(pack: str, archive: str, key: str) -> None:
    _STATE.update(files=read_directory(Path(pack)), archive=Path(archive).read_bytes(), key=Path(key))


def _file_range(job: tuple[str, int, int]) -> tuple[int, list[int]]:
    name, start, stop = job
    files, key = _files(), Path(str(_STATE["key"]))
    policy = TrustedKeys.from_files([key])
    data = files[name]
    missed = []
    for i in range(start, stop):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        try:
            report = verify_files({**files, name: bytes(tampered)}, policy)
        except Finding:
            continue
        if report.ok or not any(p.startswith(f"{name}: ") for p in report.problems):
            missed.append(i)
    return stop - start, missed


def _archive_range(job: tuple[int, int]) -> tuple[int, list[int]]:
    start, stop = job
    policy = TrustedKeys.from_files([Path(str(_STATE["key"]))])
    archive = bytes(_STATE["archive"])  # type: ignore[call-overload]
    missed = []
    for i in range(start, stop):
        tampered = bytearray(archive)
        tampered[i] ^= 0x01
        try:
            report = verify_archive(bytes(tampered), "archive", policy)
        except Finding:
            continue
        if report.ok:
            missed.append(i)
    return stop - start, missed


def _files() -> dict[str, bytes]:
    files = _STATE["files"]
    assert isinstance(files, dict)
    return files


def _chunks(size: int, step: int = 4096) -> list[tuple[int, int]]:
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    _init(str(args.pack), str(args.archive), str(args.key))
    files, archive = _files(), args.archive.read_bytes()
    policy = TrustedKeys.from_files([args.key])
    assert verify_files(files, policy).ok, "the untouched pack must verify"
    started = time.monotonic()
    result: dict[str, object] = {}
    init = (str(args.pack), str(args.archive), str(args.key))
    with ProcessPoolExecutor(os.cpu_count() or 1, initializer=_init, initargs=init) as pool:
        per_file: dict[str, dict[str, int]] = {}
        jobs = [(name, a, b) for name, data in sorted(files.items()) for a, b in _chunks(len(data))]
        for (name, _, _), (count, missed) in zip(jobs, pool.map(_file_range, jobs), strict=True):
            entry = per_file.setdefault(name, {"flips": 0, "missed": 0})
            entry["flips"] += count
            entry["missed"] += len(missed)
        archive_missed = 0
        for _, missed in pool.map(_archive_range, _chunks(len(archive))):
            archive_missed += len(missed)
    # Added and removed files: every name removed once, and one stranger added.
    removed_missed = 0
    for name in files:
        rest = {k: v for k, v in files.items() if k != name}
        try:
            if verify_files(rest, policy).ok:
                removed_missed += 1
        except Finding:
            pass
    try:
        added_ok = verify_files({**files, "extra.txt": b"x"}, policy).ok
    except Finding:
        added_ok = False
    flips = sum(entry["flips"] for entry in per_file.values())
    missed = sum(entry["missed"] for entry in per_file.values())
    result = {
        "files": len(files),
        "pack_bytes": sum(len(v) for v in files.values()),
        "file_flips": flips,
        "file_flips_missed": missed,
        "archive_bytes": len(archive),
        "archive_flips": len(archive),
        "archive_flips_missed": archive_missed,
        "removals": len(files),
        "removals_missed": removed_missed,
        "addition_missed": added_ok,
        "detected_share": 1.0 if not (missed or archive_missed or removed_missed or added_ok) else None,
        "seconds": round(time.monotonic() - started, 1),
        "per_file": per_file,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
