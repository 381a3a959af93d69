"""Which service the edge's telemetry is filed under: the OTel Resource, built the way the SDK builds it.

`Resource.create` applies the SDK's detectors, so `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_SERVICE_NAME` and `OTEL_EXPERIMENTAL_RESOURCE_DETECTORS` mean here what
they mean to any OpenTelemetry SDK, and `service.instance.id` tells workers
apart. It is computed once per worker; the encoders then reuse its wire bytes.

Precedence, as the SDK defines it for attributes given in code: the edge's
configuration beats the environment. `[telemetry] service_name` and
`[telemetry] resource` win over `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`
for the keys they set; the environment fills in everything else. Setting
`service_name = ""` hands `service.name` back to the environment (and to the
SDK's `unknown_service:<executable>` fallback). `service.version` is the
edge's own version unless `[telemetry] resource` sets one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

import ingress
from ingress.telemetry.otlp.wire import AttributeValue


def resource_attributes(service_name: str, extra: Mapping[str, str]) -> dict[str, AttributeValue]:
    given: dict[str, str] = {SERVICE_VERSION: ingress.__version__}
    if service_name:
        given[SERVICE_NAME] = service_name
    given.update(extra)
    attrs: dict[str, AttributeValue] = {}
    for key, value in Resource.create(given).attributes.items():
        if isinstance(value, str | bool | int | float):
            attrs[key] = value
        elif isinstance(value, Sequence):
            attrs[key] = tuple(item for item in value if isinstance(item, str | bool | int | float))
    return attrs
