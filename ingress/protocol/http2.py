"""HTTP/2 server session, sans I/O: bytes in, requests and flood verdicts out.

The `h2` library does the framing, HPACK, stream states and flow-control
accounting. This layer adds what an edge needs on top: the request limits
shared with HTTP/1.1, bodies gathered into a Request, and counters for the
floods that cost a server far more than the client (rapid reset, CONTINUATION,
SETTINGS, PING and empty frames, HPACK bombs). A flood raises `FloodError`,
whose error code makes h2 queue GOAWAY ENHANCE_YOUR_CALM before it returns.

Per-second counters are cleared by `tick()`, which the worker's sweep calls,
so counting costs one integer add per frame and no clock read.
"""

from __future__ import annotations

import contextlib
import struct
import typing
from collections.abc import Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import hpack
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2.stream import StreamInputs
from hpack.struct import HeaderTuple
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from ingress.config.model import HTTP2Settings, Limits
from ingress.errors import ProtocolError
from ingress.protocol.events import Request
from ingress.protocol.fields import request_from_fields
from ingress.protocol.pipe import Pipe

_FRAME_LENGTH = struct.Struct(">I")  # a frame's 24-bit length is the low three bytes
_STREAM_ID = struct.Struct(">I")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class FloodError(h2.exceptions.ProtocolError):
    """The peer is making the server do work for nothing; `kind` names the flood."""

    error_code = ErrorCodes.ENHANCE_YOUR_CALM

    def __init__(self, kind: str) -> None:
        super().__init__(f"{kind} flood")
        self.kind = kind


@dataclass
class FrameCounts:
    """Frames seen since the last tick, and CONTINUATION frames in the header block being read."""

    settings: int = 0
    pings: int = 0
    empty: int = 0
    resets: int = 0
    continuations: int = 0


class GuardedFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer, counting each frame before h2 acts on it.

    Every parsed frame passes through `_update_header_buffer`, which makes it
    the one place to see SETTINGS, PING and empty frames, and CONTINUATION
    frames before h2 buffers them.
    """

    def __init__(self, limits: HTTP2Settings, counts: FrameCounts) -> None:
        super().__init__(server=True)
        self.limits = limits
        self.counts = counts

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        counts, limits = self.counts, self.limits
        cls = f.__class__
        if cls is DataFrame:
            assert isinstance(f, DataFrame)
            if not f.data and "END_STREAM" not in f.flags:
                counts.empty += 1
        elif cls is ContinuationFrame:
            assert isinstance(f, ContinuationFrame)
            counts.continuations += 1
            if counts.continuations > limits.max_continuation_frames:
                raise FloodError("continuation")
            if not f.data and "END_HEADERS" not in f.flags:
                counts.empty += 1
            if "END_HEADERS" in f.flags:
                counts.continuations = 0
        elif cls is HeadersFrame:
            assert isinstance(f, HeadersFrame)
            if "END_HEADERS" not in f.flags:
                counts.continuations = 0
                if not f.data:
                    counts.empty += 1
        elif cls is SettingsFrame and "ACK" not in f.flags:  # type: ignore[union-attr]
            counts.settings += 1
            if counts.settings > limits.max_settings_per_second:
                raise FloodError("settings")
        elif cls is PingFrame and "ACK" not in f.flags:  # type: ignore[union-attr]
            counts.pings += 1
            if counts.pings > limits.max_pings_per_second:
                raise FloodError("ping")
        if counts.empty > limits.max_empty_frames_per_second:
            raise FloodError("empty_frames")
        return super()._update_header_buffer(f)


class _Block(HeaderTuple):
    """Carries an already encoded header block through h2 to `_Encoder`.

    h2 rebuilds the header list before encoding it but keeps HeaderTuple
    subclasses, so the class itself is the marker.
    """

    __slots__ = ()


class _Encoder(hpack.Encoder):
    """h2's HPACK encoder, passing pre-encoded blocks through untouched."""

    def encode(self, headers: typing.Any, huffman: bool = True) -> bytes:
        if headers and headers[-1].__class__ is _Block:
            return bytes(headers[-1][1])
        return super().encode(headers, huffman)


def _length(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with `first` holding the high bits of the first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals without indexing (RFC 7541 §6.2.2).

    They never touch the dynamic table, so the block is valid on every
    connection whatever its compression state: a response reused across
    requests is encoded once, not once per stream.
    """
    parts = []
    for name, value in fields:
        index = _STATIC_NAMES.get(name)
        if index is not None:  # the name from the static table, which never changes
            parts.append(_length(index, 4, 0) + _length(len(value), 7, 0) + value)
        else:
            parts.append(b"\x00" + _length(len(name), 7, 0) + name + _length(len(value), 7, 0) + value)
    return b"".join(parts)


# Response field names in the HPACK static table (RFC 7541 Appendix A), first index of each.
_STATIC_NAMES = {
    b":status": 8,
    b"accept-ranges": 18,
    b"access-control-allow-origin": 20,
    b"age": 21,
    b"allow": 22,
    b"cache-control": 24,
    b"content-disposition": 25,
    b"content-encoding": 26,
    b"content-language": 27,
    b"content-length": 28,
    b"content-location": 29,
    b"content-range": 30,
    b"content-type": 31,
    b"date": 33,
    b"etag": 34,
    b"expires": 36,
    b"last-modified": 44,
    b"link": 45,
    b"location": 46,
    b"retry-after": 53,
    b"server": 54,
    b"set-cookie": 55,
    b"strict-transport-security": 56,
    b"vary": 59,
    b"via": 60,
    b"www-authenticate": 61,
}


@dataclass
class _Inbound:
    """A request whose head arrived and whose body is still coming: gathered, or through `pipe` to its handler."""

    request: Request
    pipe: Pipe | None
    chunks: list[bytes]
    size: int = 0


@dataclass(frozen=True, slots=True)
class RequestReady:
    stream_id: int
    request: Request


@dataclass(frozen=True, slots=True)
class RequestRefused:
    """A request the limits refuse; answer `status` and stop reading the stream."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamCancelled:
    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """Flow-control credit arrived; stream 0 means the connection window (and every stream)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The client sent GOAWAY; finish what is in flight, accept nothing new."""

    last_stream_id: int


Incoming = RequestReady | RequestRefused | StreamCancelled | WindowOpened | PeerClosed


class H2Session:
    """One server-side HTTP/2 connection's protocol state."""

    def __init__(
        self, settings: HTTP2Settings, limits: Limits, streams: Callable[[Request], bool] | None = None
    ) -> None:
        """`streams` says whether a request's body goes to its handler as it arrives (`Site.streams`)."""
        self.streams = streams
        self.settings = settings
        self.limits = limits
        self.counts = FrameCounts()
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            # Responses are built by this server from lower-cased, hop-free fields.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config=config)
        conn.encoder = _Encoder()
        buffer = GuardedFrameBuffer(settings, self.counts)
        buffer.max_frame_size = conn.incoming_buffer.max_frame_size
        conn.incoming_buffer = buffer
        # Headers beyond max_header_bytes get 431 from request_from_fields; a decoded
        # block twice that size is an HPACK bomb and ends the connection.
        conn.max_inbound_frame_size = settings.max_frame_size
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
                SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
                SettingCodes.ENABLE_PUSH: 0,
                # RFC 8441: WebSockets over HTTP/2; routes that do not proxy them answer 405.
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        self.conn = conn
        self.inbound: dict[int, _Inbound] = {}
        self.highest_stream = 0
        self.last_stream = (1 << 31) - 1
        self.goaway_sent = False

    def initiate(self) -> None:
        conn = self.conn
        conn.initiate_connection()
        conn.decoder.max_header_list_size = 2 * self.limits.max_header_bytes
        # The connection window is several streams' worth, so one upload waiting on a slow upstream
        # (its stream window full) does not hold up every other stream's body.
        extra = max(0, min(4 * self.settings.initial_window_size, (1 << 31) - 1) - 65535)
        if extra:
            conn.increment_flow_control_window(extra)

    def tick(self) -> None:
        counts = self.counts
        counts.settings = counts.pings = counts.empty = counts.resets = 0

    def receive(self, data: bytes) -> list[Incoming]:
        """Events for the I/O layer; raises FloodError or h2 ProtocolError with GOAWAY queued."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.DenialOfServiceError:
            raise FloodError("hpack_bomb") from None
        out: list[Incoming] = []
        for event in events:
            cls = event.__class__
            if cls is h2.events.RequestReceived:
                assert isinstance(event, h2.events.RequestReceived)
                self._request(event, out)
            elif cls is h2.events.DataReceived:
                assert isinstance(event, h2.events.DataReceived)
                self._data(event, out)
            elif cls is h2.events.StreamEnded:
                assert isinstance(event, h2.events.StreamEnded)
                self._ended(event.stream_id, out)
            elif cls is h2.events.WindowUpdated:
                assert isinstance(event, h2.events.WindowUpdated)
                out.append(WindowOpened(event.stream_id))
            elif cls is h2.events.StreamReset:
                assert isinstance(event, h2.events.StreamReset)
                gone = self.inbound.pop(event.stream_id, None)
                if gone is not None and gone.pipe is not None:
                    gone.pipe.fail("client reset the stream")
                # A request and its reset can arrive in one read: h2 has already forgotten
                # the stream, so nothing may be answered on it.
                out = [e for e in out if getattr(e, "stream_id", None) != event.stream_id]
                self.counts.resets += 1
                if self.counts.resets > self.settings.max_resets_per_second:
                    self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
                    raise FloodError("rapid_reset")
                out.append(StreamCancelled(event.stream_id))
            elif cls is h2.events.RemoteSettingsChanged:
                # A larger initial window credits every open stream at once.
                out.append(WindowOpened(0))
            elif cls is h2.events.ConnectionTerminated:
                assert isinstance(event, h2.events.ConnectionTerminated)
                out.append(PeerClosed(event.last_stream_id or 0))
            # TrailersReceived needs no action of its own: its StreamEnded follows.
        return out

    def _request(self, event: h2.events.RequestReceived, out: list[Incoming]) -> None:
        stream_id = event.stream_id
        self.highest_stream = stream_id
        try:
            request = request_from_fields(event.headers, self.limits, "2")
        except ProtocolError as exc:
            out.append(RequestRefused(stream_id, exc.status_hint, exc.reason))
            return
        if event.stream_ended is not None:
            out.append(RequestReady(stream_id, request))
            return
        if self.streams is None or not self.streams(request):
            self.inbound[stream_id] = _Inbound(request, None, [])
            return
        # The body streams to the handler. Flow-control credit goes back only as the
        # handler reads it (`consumed`), so a slow upstream slows this client's stream.
        length = request.headers.get(b"content-length")
        pipe = Pipe(int(length) if length is not None and not request.upgrade else None)
        pipe.on_consumed = lambda n: self.consumed(stream_id, n)
        request.body = pipe
        self.inbound[stream_id] = _Inbound(request, pipe, [])
        out.append(RequestReady(stream_id, request))

    def consumed(self, stream_id: int, n: int) -> None:
        """The handler read `n` body bytes: return them to the client as window (WINDOW_UPDATE)."""
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.conn.acknowledge_received_data(n, stream_id)

    def _data(self, event: h2.events.DataReceived, out: list[Incoming]) -> None:
        stream_id = event.stream_id
        data = event.data
        padding = event.flow_controlled_length - len(data)
        pending = self.inbound.get(stream_id)
        pipe = pending.pipe if pending is not None else None
        if pipe is None:
            # A gathered body is held up to max_body_bytes anyway: credit it at once.
            self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif padding:
            self.conn.acknowledge_received_data(padding, stream_id)  # padding never reaches a reader
        if pending is None:
            return
        pending.size += len(data)
        if pending.size > self.limits.max_body_bytes:
            del self.inbound[stream_id]
            if pipe is not None:
                pipe.fail("request body larger than the limit")
            out.append(RequestRefused(stream_id, 413, "request body larger than the limit"))
            return
        if pipe is not None:
            pipe.feed(data)
        else:
            pending.chunks.append(data)
        if event.stream_ended is not None:
            self._ended(stream_id, out)

    def _ended(self, stream_id: int, out: list[Incoming]) -> None:
        pending = self.inbound.pop(stream_id, None)
        if pending is None:
            return
        if pending.pipe is not None:
            pending.pipe.finish()  # h2 has checked the length against content-length
            return
        request = pending.request
        request.body = b"".join(pending.chunks)
        out.append(RequestReady(stream_id, request))

    # sending ------------------------------------------------------------
    def send_head(self, stream_id: int, status: bytes, block: bytes, end: bool) -> None:
        """Send a response head already encoded with `encode_literal`."""
        self.conn.send_headers(stream_id, [(b":status", status), _Block(b"", block)], end_stream=end)

    def send_whole(self, stream_id: int, block: bytes, body: bytes) -> bool:
        """Send a complete response as one HEADERS and at most one DATA frame; False if it does not fit.

        The hot path for small cached responses. h2's send_headers and
        send_data rebuild and revalidate headers, allocate frame objects and
        serialise them for every stream, which was a third of the server's
        time per request. Here the two frames are written as bytes into h2's
        output buffer, and the stream's state machine and both flow-control
        windows are advanced exactly as those calls would, so h2 stays
        consistent for every later frame on the connection.
        """
        conn = self.conn
        n = len(body)
        limit = conn.max_outbound_frame_size
        stream = conn.streams.get(stream_id)
        if stream is None or len(block) > limit or n > limit:
            return False
        if n > conn.outbound_flow_control_window or n > stream.outbound_flow_control_window:
            return False
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)
        sid = _STREAM_ID.pack(stream_id)
        if n:
            machine.process_input(StreamInputs.SEND_DATA)
            machine.process_input(StreamInputs.SEND_END_STREAM)
            frames = (
                _FRAME_LENGTH.pack(len(block))[1:]
                + b"\x01\x04"
                + sid
                + block
                + _FRAME_LENGTH.pack(n)[1:]
                + b"\x00\x01"
                + sid
                + body
            )
            conn.outbound_flow_control_window -= n
            stream.outbound_flow_control_window -= n
        else:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            frames = _FRAME_LENGTH.pack(len(block))[1:] + b"\x01\x05" + sid + block
        conn._data_to_send += frames
        return True

    def window(self, stream_id: int) -> int:
        """Bytes that may be sent on the stream now (both windows and the frame size allow)."""
        try:
            return self.conn.local_flow_control_window(stream_id)
        except h2.exceptions.StreamClosedError:
            return -1

    def send_body(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        """Send `data`, which must fit in `window(stream_id)`, split into frames of the peer's size."""
        conn = self.conn
        size = conn.max_outbound_frame_size
        view = memoryview(data)
        while len(view) > size:
            conn.send_data(stream_id, view[:size])
            view = view[size:]
        conn.send_data(stream_id, view, end_stream=end)

    def refuse(self, stream_id: int, code: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        """Stop the peer sending on a stream that has its answer."""
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.conn.reset_stream(stream_id, code)

    def goaway_frame(self, error_code: ErrorCodes = ErrorCodes.NO_ERROR) -> bytes:
        """A GOAWAY naming the last stream that will be answered.

        Built by hand rather than through h2's close_connection, which would
        move the whole connection to CLOSED and refuse to finish the streams
        already accepted; RFC 9113 §6.8 wants exactly those finished.
        """
        self.goaway_sent = True
        self.last_stream = self.highest_stream
        return GoAwayFrame(0, last_stream_id=self.highest_stream, error_code=error_code).serialize()

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()
