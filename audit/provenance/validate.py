"""Check a statement against the in-toto attestation protobuf bindings and the SLSA v1 required fields.

in-toto-attestation 0.9.3 ships `Statement.validate()` and `ResourceDescriptor.validate()` but no wrapper
for the provenance predicate, so the predicate is parsed strictly into its protobuf message (an unknown or
mistyped field fails) and the fields SLSA v1 requires are checked here, as numbered steps.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

from audit.errors import AuditError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _descriptor(data: dict[str, Any], where: str) -> Any:
    try:
        message = json_format.ParseDict(data, ResourceDescriptor().pb)
    except json_format.ParseError as exc:
        raise AuditError(f"provenance {where}: {exc}") from None
    descriptor = ResourceDescriptor.copy_from_pb(message)
    try:
        descriptor.validate()
    except ValueError as exc:
        raise AuditError(f"provenance {where}: {exc}") from None
    for algorithm, value in data.get("digest", {}).items():
        if algorithm == "sha256" and not _SHA256.match(value):
            raise AuditError(f"provenance {where}: sha256 {value!r} is not 64 lower-case hex digits")
    return message


def validate_statement(statement: dict[str, Any]) -> None:
    """Raise AuditError naming the first field that the bindings or SLSA v1 reject."""
    # (1) Envelope fields: the statement type and at least one subject with a digest.
    subjects = [_descriptor(s, f"subject[{i}]") for i, s in enumerate(statement.get("subject", ()))]
    wrapper = Statement(subjects, statement.get("predicateType", ""), statement.get("predicate", {}))
    wrapper.pb.type = statement.get("_type", "")
    try:
        wrapper.validate()
    except ValueError as exc:
        raise AuditError(f"provenance statement: {exc}") from None
    # (2) The predicate must parse strictly as SLSA provenance v1 (unknown fields and bad timestamps fail).
    try:
        predicate = json_format.ParseDict(statement["predicate"], provenance_pb2.Provenance())
    except json_format.ParseError as exc:
        raise AuditError(f"provenance predicate: {exc}") from None
    # (3) SLSA v1 required fields.
    definition = predicate.build_definition
    if not definition.build_type:
        raise AuditError("provenance predicate: buildDefinition.buildType is required")
    if not definition.external_parameters.fields:
        raise AuditError("provenance predicate: buildDefinition.externalParameters is required")
    if not predicate.run_details.builder.id:
        raise AuditError("provenance predicate: runDetails.builder.id is required")
    # (4) Every dependency and byproduct is a valid resource descriptor.
    build = statement["predicate"]["buildDefinition"]
    for i, item in enumerate(build.get("resolvedDependencies", ())):
        _descriptor(item, f"resolvedDependencies[{i}] ({item.get('name', '?')})")
    for i, item in enumerate(statement["predicate"]["runDetails"].get("byproducts", ())):
        _descriptor(item, f"byproducts[{i}] ({item.get('name', '?')})")
