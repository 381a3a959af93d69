"""The audit trail: one hash chain across processes, restarts and rotation, and tampering named precisely.

Everything runs on real files in tmp_path; concurrency uses real forked
processes, since the chain's lock is between processes, not threads.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto_json.logs.v1.logs import LogsData

from ingress.config.telemetry import Audit
from ingress.protocol.events import Decision
from ingress.telemetry.audit import LOG_EVENTS, AuditLogHandler, AuditTrail
from ingress.telemetry.auditchain import ZERO_SHA256, AuditError, ChainReport, chain_files, verify_chain
from ingress.telemetry.otlp.logs import INFO, WARN
from ingress.telemetry.record import Exchange
from ingress.telemetry.rotating import RotatingFile, rotated_files

RESOURCE = {"service.name": "edgeward-test", "deployment.environment.name": "test"}
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN = bytes.fromhex("b7ad6b7169203331")
INGRESS = Path(sys.executable).with_name("ingress")


# --------------------------------------------------------------------------- helpers


def make_trail(path: Path, **settings: Any) -> AuditTrail:
    return AuditTrail(Audit(file=str(path), **settings), RESOURCE)


def write_events(trail: AuditTrail, count: int, start: int = 0, per_flush: int = 1) -> None:
    for i in range(start, start + count):
        trail.record("edge.test", INFO, f"event {i}", {"n": i, "edge.listener": "https"})
        if (i - start + 1) % per_flush == 0:
            trail.flush()
    trail.flush()


def file_lines(path: str | Path) -> list[bytes]:
    return Path(path).read_bytes().splitlines()


def sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def record_of(line: bytes) -> dict[str, Any]:
    (resource_logs,) = json.loads(line)["resourceLogs"]
    (scope_logs,) = resource_logs["scopeLogs"]
    (record,) = scope_logs["logRecords"]
    return record  # type: ignore[no-any-return]


def attrs_of(line: bytes) -> dict[str, Any]:
    out = {}
    for item in record_of(line)["attributes"]:
        ((_, value),) = item["value"].items()
        out[item["key"]] = value
    return out


def seq_of(line: bytes) -> int:
    return int(attrs_of(line)["audit.seq"])


def rewrite(path: str | Path, lines: list[bytes]) -> None:
    Path(path).write_bytes(b"".join(line + b"\n" for line in lines))


def denial(**overrides: Any) -> Exchange:
    fields: dict[str, Any] = {
        "trace_id": TRACE,
        "span_id": SPAN,
        "parent_id": b"",
        "trace_state": "",
        "sampled": True,
        "start_ns": 1_700_000_000_000_000_000,
        "end_ns": 1_700_000_000_001_000_000,
        "method": "DELETE",
        "path": "/api/orders/7",
        "route": "/api/",
        "status": 403,
        "protocol": "2",
        "tls": "TLSv1.3",
        "host": "edge.example",
        "client": "192.0.2.7",
        "user_agent": "curl/8",
        "decision": Decision("denied_rbac", "no grant for DELETE", rule="orders-admin", subject="alice"),
        "cache": "",
        "upstream": "",
        "attempts": (),
        "body_bytes": 0,
        "scheme": "https",
        "sni": "edge.example",
        "client_cert": "ab" * 32,
        "error": "",
    }
    fields.update(overrides)
    return Exchange(**fields)


@pytest.fixture
def rotated_trail(tmp_path: Path) -> Iterator[list[str]]:
    """30 records over several files (a rotation every ~10 records): the tamper tests' subject."""
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path, rotate_bytes=7000)
    write_events(trail, 30, per_flush=3)
    trail.close()
    files = chain_files(str(path))
    assert len(files) >= 3
    assert verify_chain(files).ok
    yield files


def locate(files: list[str], seq: int) -> tuple[str, int]:
    """(file, 1-based line) of the record with `seq`."""
    for name in files:
        for number, line in enumerate(file_lines(name), 1):
            if seq_of(line) == seq:
                return name, number
    raise AssertionError(f"seq {seq} not found")


def assert_broken(report: ChainReport, file: str, line: int, seq: int, problem: str) -> None:
    assert not report.ok, str(report)
    broken = report.broken
    assert broken is not None
    assert (broken.file, broken.line, broken.seq) == (file, line, seq), str(report)
    assert problem in broken.problem, str(report)
    assert f"{file}:{line}" in str(report)


# --------------------------------------------------------------------------- the records


def test_records_are_otlp_json_lines_with_the_chain_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path)
    trail.record("edge.config.reloaded", INFO, "config reloaded", {"edge.source": "edge.toml"})
    trail.denied(denial())
    trail.record("edge.cert.reloaded", WARN, "certificate reloaded", {"edge.listener": "https"}, TRACE, SPAN)
    written = trail.flush()
    assert len(written) == 3
    lines = file_lines(path)
    assert len(lines) == 3

    prev = ZERO_SHA256
    for seq, line in enumerate(lines, 1):
        data = LogsData.from_json(line)  # the OTLP JSON schema, as the file exporter writes it
        (resource_logs,) = data.resource_logs
        resource = {kv.key: kv.value.string_value for kv in resource_logs.resource.attributes}
        assert resource["service.name"] == "edgeward-test"
        assert resource["deployment.environment.name"] == "test"
        (scope_logs,) = resource_logs.scope_logs
        assert scope_logs.scope is not None
        assert scope_logs.scope.name == "edgeward"
        (record,) = scope_logs.log_records
        attributes = attrs_of(line)
        assert attributes["audit.seq"] == str(seq)  # int64 as a string
        assert attributes["audit.prev_sha256"] == prev
        assert attributes["event.name"] == record.event_name
        assert record.time_unix_nano
        prev = sha(line)

    config, denied, cert = (record_of(line) for line in lines)
    assert config["severityNumber"] == INFO and config["severityText"] == "INFO"
    assert config["body"] == {"stringValue": "config reloaded"}
    assert "traceId" not in config

    assert denied["eventName"] == "edge.auth.denied"
    assert denied["severityNumber"] == WARN
    assert denied["traceId"] == TRACE.hex() and denied["spanId"] == SPAN.hex()
    assert denied["flags"] == 1
    assert denied["timeUnixNano"] == "1700000000001000000"
    got = attrs_of(lines[1])
    assert got["edge.auth.outcome"] == "denied_rbac"
    assert got["edge.auth.reason"] == "no grant for DELETE"
    assert got["edge.auth.rule"] == "orders-admin"
    assert got["edge.auth.subject"] == "alice"
    assert got["client.address"] == "192.0.2.7"
    assert got["url.path"] == "/api/orders/7"
    assert got["http.request.method"] == "DELETE"
    assert got["http.route"] == "/api/"
    assert got["tls.client.hash.sha256"] == "AB" * 32  # upper case, as the span and the conventions spell it
    assert got["server.address"] == "edge.example" and "server.port" not in got
    assert got["http.response.status_code"] == "403"
    assert "user_agent.original" not in got

    assert cert["traceId"] == TRACE.hex() and cert["spanId"] == SPAN.hex()
    assert cert["severityText"] == "WARN"


def test_denial_without_subject_or_certificate_omits_them(tmp_path: Path) -> None:
    trail = make_trail(tmp_path / "audit.jsonl")
    trail.denied(denial(decision=Decision("ip_denied", "not in allow list"), client_cert="", method="", path=""))
    trail.denied(denial(decision=Decision("allowed", "")))  # not an audit event
    trail.denied(denial(decision=None))
    assert len(trail.flush()) == 1
    (line,) = file_lines(tmp_path / "audit.jsonl")
    got = attrs_of(line)
    assert got["edge.auth.outcome"] == "ip_denied"
    assert "edge.auth.subject" not in got and "tls.client.hash.sha256" not in got and "url.path" not in got
    assert record_of(line)["body"]["stringValue"] == "request refused: ip_denied (not in allow list)"


def test_denials_off_records_none(tmp_path: Path) -> None:
    trail = make_trail(tmp_path / "audit.jsonl", denials="off")
    trail.denied(denial())
    assert trail.flush() == []
    assert not (tmp_path / "audit.jsonl").exists()


def test_callers_cannot_set_the_chain_fields(tmp_path: Path) -> None:
    trail = make_trail(tmp_path / "audit.jsonl")
    trail.record("edge.test", INFO, "x", {"audit.seq": 999, "audit.prev_sha256": "f" * 64})
    trail.flush()
    (line,) = file_lines(tmp_path / "audit.jsonl")
    assert seq_of(line) == 1
    assert attrs_of(line)["audit.prev_sha256"] == ZERO_SHA256
    assert [a["key"] for a in record_of(line)["attributes"]].count("audit.seq") == 1


def test_otlp_export_carries_the_same_chain_anchors(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path)
    trail.denied(denial())
    trail.record("edge.drain", INFO, "draining", {"edge.connections": 3})
    written = trail.flush()
    request = ExportLogsServiceRequest.FromString(trail.encode_logs(written))
    (resource_logs,) = request.resource_logs
    resource = {kv.key: kv.value for kv in resource_logs.resource.attributes}
    assert resource["service.name"].string_value == "edgeward-test"
    assert resource["process.pid"].int_value == os.getpid()
    (scope_logs,) = resource_logs.scope_logs
    assert scope_logs.scope.name == "edgeward"
    records = list(scope_logs.log_records)
    lines = file_lines(path)
    assert len(records) == len(lines) == 2
    for record, line in zip(records, lines, strict=True):
        exported = {kv.key: kv.value for kv in record.attributes}
        on_disk = attrs_of(line)
        assert exported["audit.seq"].int_value == int(on_disk["audit.seq"])
        assert exported["audit.prev_sha256"].string_value == on_disk["audit.prev_sha256"]
        assert record.event_name == record_of(line)["eventName"]
        assert record.time_unix_nano == int(record_of(line)["timeUnixNano"])
    assert records[0].trace_id == TRACE and records[0].span_id == SPAN
    assert records[0].severity_number == WARN and records[0].severity_text == "WARN"
    assert {kv.key: kv.value for kv in records[1].attributes}["edge.connections"].int_value == 3
    assert trail.encode_logs([]) and trail.flush() == []


# --------------------------------------------------------------------------- one chain


def _child(path: str, inherited: AuditTrail | None, label: str, count: int, barrier: Any, seed: int) -> None:
    trail = inherited if inherited is not None else make_trail(Path(path), rotate_bytes=40_000)
    rng = random.Random(seed)
    barrier.wait()
    for i in range(count):
        trail.record("edge.test", INFO, f"{label} {i}", {"edge.writer": label, "n": i})
        if rng.random() < 0.3:
            trail.flush()
    trail.flush()


def test_concurrent_processes_keep_one_unbroken_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    parent = make_trail(path, rotate_bytes=40_000)
    parent.record("edge.test", INFO, "before the fork", {"edge.writer": "parent"})
    parent.flush()
    parent.record("edge.test", INFO, "queued in the parent, never the child's to write", {"edge.writer": "parent"})
    ctx = multiprocessing.get_context("fork")
    writers, per_writer = 6, 150
    barrier = ctx.Barrier(writers)
    processes = [
        # Half use the trail object created before the fork, as workers forked by the supervisor would.
        ctx.Process(target=_child, args=(str(path), parent if i % 2 else None, f"w{i}", per_writer, barrier, i))
        for i in range(writers)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    parent.flush()

    files = chain_files(str(path))
    assert len(files) > 2, "the writers should have rotated the file between them"
    report = verify_chain(files)
    total = 1 + writers * per_writer + 1
    assert report.ok, str(report)
    assert (report.records, report.first_seq, report.last_seq) == (total, 1, total)
    seen: dict[str, list[int]] = {}
    for name in files:
        for line in file_lines(name):
            got = attrs_of(line)
            seen.setdefault(got["edge.writer"], []).append(int(got.get("n", "0")))
    assert seen["parent"] == [0, 0]  # the queued parent event was written once, by the parent
    for i in range(writers):
        assert seen[f"w{i}"] == list(range(per_writer))


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = make_trail(path)
    write_events(first, 5)
    first.close()
    last_before = file_lines(path)[-1]
    second = make_trail(path)  # a new process would start just like this
    write_events(second, 5, start=5)
    second.close()
    lines = file_lines(path)
    assert seq_of(lines[5]) == 6
    assert attrs_of(lines[5])["audit.prev_sha256"] == sha(last_before)
    report = verify_chain(chain_files(str(path)))
    assert report.ok and (report.first_seq, report.last_seq) == (1, 10)
    assert report.last_sha256 == sha(lines[-1])
    assert str(report) == f"ok: 10 records, seq 1..10, last sha256 {sha(lines[-1])}"


def test_rotation_continues_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path, rotate_bytes=3000)
    write_events(trail, 25, per_flush=2)
    trail.close()
    files = chain_files(str(path))
    assert files[-1] == str(path) and len(files) >= 4
    assert files[:-1] == rotated_files(str(path))
    for name in files[:-1]:
        assert re.fullmatch(re.escape(str(path)) + r"\.\d{8}T\d{6}Z(-\d+)?", name)
        assert os.stat(name).st_mode & 0o137 == 0  # created 0o640 (less under a stricter umask)
    for older, newer in itertools.pairwise(files):
        first_of_newer = file_lines(newer)[0]
        assert attrs_of(first_of_newer)["audit.prev_sha256"] == sha(file_lines(older)[-1])
        assert seq_of(first_of_newer) == seq_of(file_lines(older)[-1]) + 1
    report = verify_chain(files)
    assert report.ok and (report.records, report.last_seq) == (25, 25)
    assert verify_chain(chain_files(str(tmp_path))).ok  # the directory means the same trail
    assert chain_files(files[0]) == files  # so does any of its rotated files


def test_rotation_after_restart_links_to_the_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path, rotate_bytes=1)  # every batch starts a new file
    write_events(trail, 3)
    trail.close()
    restarted = make_trail(path, rotate_bytes=1)
    write_events(restarted, 2, start=3)
    files = chain_files(str(path))
    assert len(files) == 5
    report = verify_chain(files)
    assert report.ok and report.last_seq == 5


def test_keep_prunes_old_files_and_the_rest_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path, rotate_bytes=1, keep=2)
    write_events(trail, 6)
    files = chain_files(str(path))
    assert len(rotated_files(str(path))) == 2 and len(files) == 3
    report = verify_chain(files)
    assert report.ok and (report.first_seq, report.last_seq) == (4, 6)  # the report shows where it starts


def test_time_based_rotation_and_a_second_writer_follows_it(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    path = str(tmp_path / "spans.jsonl")
    a = RotatingFile(path, rotate_interval=60, clock=lambda: now[0])
    b = RotatingFile(path, rotate_interval=60, clock=lambda: now[0])
    assert a.write(b"one\n")
    assert b.write(b"two\n")
    now[0] += 61
    assert a.write(b"three\n")  # a rotates
    assert b.write(b"four\n")  # b notices the path's new inode and follows it
    (old,) = rotated_files(path)
    assert old == f"{path}.20270115T080101Z"
    assert file_lines(old) == [b"one", b"two"]
    assert file_lines(path) == [b"three", b"four"]
    now[0] += 30
    assert b.write(b"five\n")
    assert len(rotated_files(path)) == 1  # 30 s into the new file: not due yet
    now[0] += 31
    assert b.write(b"six\n")
    assert len(rotated_files(path)) == 2


def test_same_second_rotations_get_ordered_suffixes(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    f = RotatingFile(path, rotate_bytes=1, clock=lambda: 1_800_000_000.0)
    for i in range(12):
        assert f.write(b"%d\n" % i)
    names = rotated_files(path)
    assert [Path(n).name for n in names[:3]] == ["f.20270115T080000Z", "f.20270115T080000Z-1", "f.20270115T080000Z-2"]
    assert [file_lines(n)[0] for n in names] == [b"%d" % i for i in range(11)]  # -10 sorts after -9


def test_last_line_of_long_lines_and_of_the_rotated_file(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    f = RotatingFile(path, rotate_bytes=200_000)
    long_line = b"x" * 150_000
    f.write(b"short\n" + long_line + b"\n")
    with f.locked() as batch:
        assert batch.last_line() == long_line
    f.write(b"next\n")
    with f.locked() as batch:
        assert batch.last_line() == b"next"
    g = RotatingFile(path, rotate_bytes=1)
    with g.locked() as batch:  # rotated on entry: the current file is new and empty
        assert batch.size == 0
        assert batch.last_line() == b"next"


def test_torn_tail_is_terminated_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path)
    write_events(trail, 3)
    with open(path, "ab") as fh:
        fh.write(b'{"resourceLogs":[{"resou')  # a writer died mid-append
    restarted = make_trail(path)
    write_events(restarted, 2, start=3)
    lines = file_lines(path)
    assert lines[3] == b'{"resourceLogs":[{"resou'
    assert attrs_of(lines[4])["audit.prev_sha256"] == sha(lines[2])  # chained to the last complete record
    assert_broken(verify_chain([str(path)]), str(path), 4, 0, "not a JSON line")


# --------------------------------------------------------------------------- gaps the trail admits to


def test_overflow_is_counted_and_written_as_a_dropped_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path, max_pending=16)
    for i in range(20):
        trail.record("edge.test", INFO, f"event {i}", {"n": i})
    trail.denied(denial())
    assert trail.dropped == 5
    written = trail.flush()
    assert len(written) == 17
    last = file_lines(path)[-1]
    assert record_of(last)["eventName"] == "edge.audit.dropped"
    assert LogsData.from_json(last).resource_logs[0].scope_logs[0].log_records[0].event_name == "edge.audit.dropped"
    assert attrs_of(last)["audit.dropped"] == "5"
    assert trail.flush() == []  # reported once
    assert verify_chain([str(path)]).ok


def test_a_flush_formats_a_bounded_batch_and_close_writes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(Audit(file=str(path)), RESOURCE, max_batch=10)
    for i in range(25):
        trail.record("edge.test", INFO, f"event {i}", {"n": i})
    assert len(trail.flush()) == 10
    assert len(trail.flush()) == 10
    trail.record("edge.test", INFO, "late", {})
    trail.close()
    assert [record_of(line)["body"]["stringValue"] for line in file_lines(path)][-7:] == [
        *(f"event {i}" for i in range(19, 25)),
        "late",
    ]
    report = verify_chain([str(path)])
    assert report.ok and report.records == 26 and trail.dropped == 0


def test_a_failed_write_is_counted_and_reported_when_writing_works_again(tmp_path: Path) -> None:
    path = tmp_path / "later" / "audit.jsonl"
    trail = make_trail(path)
    write_events(trail, 3)  # the directory does not exist yet
    assert trail.dropped == 3 and trail.written == 0
    path.parent.mkdir()
    trail.record("edge.test", INFO, "after", {})
    written = trail.flush()
    assert [event.event_name for event in written] == ["edge.test", "edge.audit.dropped"]
    assert attrs_of(file_lines(path)[-1])["audit.dropped"] == "3"
    assert verify_chain([str(path)]).ok


# --------------------------------------------------------------------------- tampering


def test_edited_record_is_named(rotated_trail: list[str]) -> None:
    file, line = locate(rotated_trail, 17)
    lines = file_lines(file)
    lines[line - 1] = lines[line - 1].replace(b"event 16", b"event 61")
    rewrite(file, lines)
    assert_broken(verify_chain(rotated_trail), file, line, 17, "record edited: its hash no longer matches")


def test_deleted_middle_record_is_named(rotated_trail: list[str]) -> None:
    file, line = locate(rotated_trail, 12)
    lines = file_lines(file)
    if line == len(lines):  # keep the case "in the middle of a file"
        file, line = locate(rotated_trail, 13)
        lines = file_lines(file)
    seq = seq_of(lines[line - 1])
    del lines[line - 1]
    rewrite(file, lines)
    report = verify_chain(rotated_trail)
    assert_broken(report, file, line, seq + 1, f"record missing between seq {seq - 1} and {seq + 1}")


def test_swapped_records_are_named(rotated_trail: list[str]) -> None:
    file, line = locate(rotated_trail, 5)
    lines = file_lines(file)
    assert seq_of(lines[line]) == 6
    lines[line - 1], lines[line] = lines[line], lines[line - 1]
    rewrite(file, lines)
    report = verify_chain(rotated_trail)
    assert_broken(report, file, line, 6, "records out of order: seq 6 comes before seq 5")


def test_record_moved_far_back_is_out_of_order(rotated_trail: list[str]) -> None:
    file, line = locate(rotated_trail, 2)
    lines = file_lines(file)
    moved = lines.pop(line - 1)
    lines.insert(line + 3, moved)  # 1, 3, 4, 5, 6, 2, 7 ...
    rewrite(file, lines)
    assert_broken(verify_chain(rotated_trail), file, line, 3, "records out of order: seq 3 comes before seq 2")


def test_deleted_last_line_of_the_first_file_is_named(rotated_trail: list[str]) -> None:
    first, second = rotated_trail[0], rotated_trail[1]
    lines = file_lines(first)
    gone = seq_of(lines[-1])
    rewrite(first, lines[:-1])
    report = verify_chain(rotated_trail)
    assert_broken(report, second, 1, gone + 1, f"record missing between seq {gone - 1} and {gone + 1}")


def test_inserted_forged_record_is_named(rotated_trail: list[str]) -> None:
    file, line = locate(rotated_trail, 8)
    lines = file_lines(file)
    # A careful forgery: the next seq, linked to the record before it, in the trail's own format.
    attrs = record_of(lines[line - 1])["attributes"]
    for attr in attrs:
        if attr["key"] == "audit.seq":
            attr["value"] = {"intValue": "9"}
        if attr["key"] == "audit.prev_sha256":
            attr["value"] = {"stringValue": sha(lines[line - 1])}
        if attr["key"] == "n":
            attr["value"] = {"intValue": "1000"}
    item = json.loads(lines[line - 1])
    item["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["attributes"] = attrs
    forged = json.dumps(item, separators=(",", ":")).encode()
    lines.insert(line, forged)
    rewrite(file, lines)
    report = verify_chain(rotated_trail)
    assert_broken(report, file, line + 1, 9, "record inserted: the next record links past it to seq 8")


def test_inserted_garbage_and_foreign_lines_are_named(rotated_trail: list[str]) -> None:
    file, line = locate(rotated_trail, 20)
    lines = file_lines(file)
    rewrite(file, [*lines[:line], b"hello", *lines[line:]])
    assert_broken(verify_chain(rotated_trail), file, line + 1, 0, "not a JSON line")
    foreign = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "hi"}}]}]}]})
    rewrite(file, [*lines[:line], foreign.encode(), *lines[line:]])
    assert_broken(verify_chain(rotated_trail), file, line + 1, 0, "not an audit record: no audit.seq")


def test_edited_link_fields_are_named(rotated_trail: list[str]) -> None:
    file, line = locate(rotated_trail, 14)
    original = file_lines(file)
    lines = list(original)
    lines[line - 1] = re.sub(rb'"stringValue":"[0-9a-f]{64}"', b'"stringValue":"' + b"1" * 64 + b'"', lines[line - 1])
    rewrite(file, lines)
    assert_broken(verify_chain(rotated_trail), file, line, 14, "record edited: its audit.prev_sha256 no longer")
    lines = list(original)
    lines[line - 1] = lines[line - 1].replace(b'"intValue":"14"', b'"intValue":"41"')
    rewrite(file, lines)
    assert_broken(verify_chain(rotated_trail), file, line, 41, "record edited: audit.seq is 41 but it follows seq 13")


def test_replayed_record_is_named(rotated_trail: list[str]) -> None:
    file, line = locate(rotated_trail, 10)
    lines = file_lines(file)
    lines.insert(line, lines[line - 1])
    rewrite(file, lines)
    assert_broken(verify_chain(rotated_trail), file, line + 1, 10, "record duplicated")


def test_first_record_must_start_from_zeros(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(make_trail(path), 2)
    lines = file_lines(path)
    lines[0] = lines[0].replace(ZERO_SHA256.encode(), b"f" * 64)
    rewrite(path, lines)
    assert_broken(verify_chain([str(path)]), str(path), 1, 1, "first record's audit.prev_sha256 must be 64 zeros")


def test_what_a_chain_alone_cannot_see(rotated_trail: list[str]) -> None:
    """The documented limits: the newest record and a cut-off tail; the OTLP copies and last sha256 anchor them."""
    current = rotated_trail[-1]
    lines = file_lines(current)
    before = verify_chain(rotated_trail)
    rewrite(current, [*lines[:-1], lines[-1].replace(b"event 29", b"event 92")])
    edited = verify_chain(rotated_trail)
    assert edited.ok and edited.last_sha256 != before.last_sha256  # only an anchor kept elsewhere shows it
    rewrite(current, lines[:-2])
    truncated = verify_chain(rotated_trail)
    assert truncated.ok and truncated.last_seq == before.last_seq - 2


# --------------------------------------------------------------------------- operational logs as audit events


def test_log_events_become_audit_events(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = make_trail(path)
    handler = AuditLogHandler(trail)
    root = logging.getLogger("edgeward")
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        tls = logging.getLogger("edgeward.tls")
        tls.info(
            "certificate reloaded",
            extra={"event": "tls.cert_reloaded", "listener": "https", "cert": "/etc/edge/cert.pem", "token": "s3cr3t"},
        )
        logging.getLogger("edgeward.upstream").warning(
            "origin %s of %s ejected for %.0f s",
            "10.0.0.1:80",
            "api",
            30.0,
            extra={"event": "upstream.ejected", "upstream": "api", "origin": "10.0.0.1:80", "seconds": 30.0},
        )
        logging.getLogger("edgeward.http1").info("not audited", extra={"event": "http1.rejected"})
        logging.getLogger("edgeward.worker").info("no event at all")
        logging.getLogger("edgeward.jwt").info("keys", extra={"event": "jwks_keys_changed", "kids": ["b", "a"]})
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
    assert not path.exists()  # nothing written until the timer flushes
    trail.flush()
    lines = file_lines(path)
    for line in lines:
        LogsData.from_json(line)
    assert [record_of(line)["eventName"] for line in lines] == [
        "edge.cert.reloaded",
        "edge.upstream.ejected",
        "edge.jwks.changed",
    ]
    cert = attrs_of(lines[0])
    assert cert["edge.listener"] == "https" and cert["edge.cert"] == "/etc/edge/cert.pem"
    assert cert["log.event"] == "tls.cert_reloaded"
    assert b"s3cr3t" not in path.read_bytes() and "edge.token" not in cert
    assert record_of(lines[0])["body"] == {"stringValue": "certificate reloaded"}
    ejected = record_of(lines[1])
    assert ejected["severityText"] == "WARN"
    assert ejected["body"]["stringValue"] == "origin 10.0.0.1:80 of api ejected for 30 s"
    assert attrs_of(lines[1])["edge.seconds"] == 30.0
    kids = {a["key"]: a["value"] for a in record_of(lines[2])["attributes"]}["edge.kids"]
    assert kids == {"arrayValue": {"values": [{"stringValue": "b"}, {"stringValue": "a"}]}}


def test_immediate_handler_writes_each_event(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    logger = logging.getLogger("edgeward.supervisor.test")
    handler = AuditLogHandler(make_trail(path), immediate=True)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("config valid; reloading workers", extra={"event": "config.reload"})
        assert record_of(file_lines(path)[0])["eventName"] == "edge.config.accepted"
        handler.trail = None  # no audit file configured any more
        logger.info("stopping", extra={"event": "supervisor.stop"})
    finally:
        logger.removeHandler(handler)
    assert len(file_lines(path)) == 1


def test_every_mapped_log_event_is_logged_somewhere() -> None:
    """The mapping names events the code really logs; a renamed event would silently leave the trail."""
    package = Path(__file__).resolve().parents[1] / "ingress"
    source = "\n".join(p.read_text() for p in package.rglob("*.py") if "telemetry" not in p.parts)
    for event in LOG_EVENTS:
        assert f'"event": "{event}"' in source, event


# --------------------------------------------------------------------------- the command line


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INGRESS), "audit-verify", *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_cli_verifies_a_good_chain_and_names_a_broken_link(rotated_trail: list[str]) -> None:
    base = rotated_trail[-1]
    ok = run_verify(base)
    last = sha(file_lines(base)[-1])
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.strip() == f"ok: 30 records, seq 1..30, last sha256 {last}"
    as_json = run_verify("--json", str(Path(base).parent))
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["last_seq"] == 30

    file, line = locate(rotated_trail, 22)
    lines = file_lines(file)
    lines[line - 1] = lines[line - 1].replace(b"event 21", b"event 12")
    rewrite(file, lines)
    broken = run_verify(base)
    assert broken.returncode == 1
    assert f"{file}:{line} (seq 22): record edited: its hash no longer matches" in broken.stderr
    explicit = run_verify(*rotated_trail)  # the same files named one by one
    assert explicit.returncode == 1 and f"{file}:{line}" in explicit.stderr


def test_cli_without_audit_files(tmp_path: Path) -> None:
    missing = run_verify(str(tmp_path / "nothing.jsonl"))
    assert missing.returncode == 1
    assert "no audit file there" in missing.stderr
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.jsonl").write_text("")
    with pytest.raises(AuditError, match="one audit trail"):
        chain_files(str(tmp_path))
