"""HTTP/3 request rules, sans I/O, on top of aioquic's H3Connection.

aioquic already decodes QPACK and refuses the malformed shapes it knows
(uppercase or invalid field names, connection-specific fields, misplaced or
repeated pseudo-headers, a missing :method or :authority, an empty :path
with an http(s) :scheme, a content-length the DATA frames contradict) by
closing the connection with H3_MESSAGE_ERROR, which RFC 9114 section 8
allows for any stream error. The edge's limits are applied by
`request_from_fields`, shared with HTTP/2. What is left here is what
neither checks: that :scheme is present and https (aioquic lets it be
omitted, as for CONNECT), and which methods may run on replayable 0-RTT
data.
"""

from __future__ import annotations

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, encode_frame

from ingress.config.model import Limits
from ingress.errors import ProtocolError
from ingress.protocol.events import Request
from ingress.protocol.fields import request_from_fields

# RFC 8470: only requests that are safe to replay may run on 0-RTT data.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

H3_NO_ERROR = ErrorCode.H3_NO_ERROR
H3_MESSAGE_ERROR = ErrorCode.H3_MESSAGE_ERROR
H3_REQUEST_REJECTED = ErrorCode.H3_REQUEST_REJECTED
H3_INTERNAL_ERROR = ErrorCode.H3_INTERNAL_ERROR


def parse_request(fields: list[tuple[bytes, bytes]], limits: Limits) -> Request:
    """A Request (body still empty) from a decoded header block; raise ProtocolError on anything unservable."""
    request = request_from_fields(fields, limits, "3")
    # A missing :scheme arrives as ""; a missing :path fails in request_from_fields as not origin-form.
    if request.scheme != "https":
        raise ProtocolError(400, "missing :scheme, or not https")
    return request


def goaway_frame(stream_id: int) -> bytes:
    """GOAWAY for the control stream: requests on `stream_id` and above will not be processed."""
    return encode_frame(FrameType.GOAWAY, encode_uint_var(stream_id))
