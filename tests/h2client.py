"""A small raw HTTP/2 client for tests: frames out, frames in, nothing validated on the way.

hyperframe builds and parses frames and hpack encodes header blocks, but no
state machine stands between a test and the wire: a test can send uppercase
names, pseudo-headers out of order, CONTINUATION floods or frames on streams
it has reset, and it sees every frame the server sends, GOAWAY and RST_STREAM
codes included.

Flow control belongs to the test. With `auto_window` the client returns the
credit of every DATA frame it reads, on the connection and on the stream
(except streams listed in `hold`); without it, the client sends no
WINDOW_UPDATE it was not told to send.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9

Address = tuple[str, int]
Field = tuple[bytes, bytes]

# Error codes (RFC 9113 §7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
STREAM_CLOSED = 0x5
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# SETTINGS parameters (RFC 9113 §6.5.2).
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6


def h2_context(cafile: Path, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
    """A client context trusting only `cafile` and offering `alpn` (a fresh one: shared contexts stay untouched)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass
class Stream:
    """What the server sent on one stream."""

    id: int
    headers: list[Field] = field(default_factory=list)
    trailers: list[Field] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray, repr=False)
    data_frames: int = 0
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code, if the server reset the stream

    @property
    def status(self) -> int:
        value = self.header(":status")
        assert value is not None, f"stream {self.id} has no response head (reset={self.reset})"
        return int(value)

    @property
    def body(self) -> bytes:
        return bytes(self.data)

    def header(self, name: str) -> str | None:
        key = name.encode("ascii")
        for n, v in self.headers:
            if n == key:
                return v.decode("latin-1")
        return None

    @property
    def finished(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    """One HTTP/2 connection driven frame by frame; `frames` holds every frame received, in order."""

    def __init__(
        self,
        sock: socket.socket,
        settings: dict[int, int] | None = None,
        auto_window: bool = True,
        preface: bool = True,
    ) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 24
        self.streams: dict[int, Stream] = {}
        self.frames: list[Frame] = []
        self.server_settings: dict[int, int] = {}
        self.goaway: GoAwayFrame | None = None
        self.ping_acks: list[bytes] = []
        self.settings_acks = 0
        self.eof = False
        self.auto_window = auto_window
        self.hold: set[int] = set()
        self.next_stream = 1
        self._block: tuple[HeadersFrame, bytearray] | None = None
        if preface:
            self.send_raw(PREFACE + SettingsFrame(0, settings or {}).serialize())

    # connecting ----------------------------------------------------------------------------------------------
    @classmethod
    def tls(
        cls,
        address: Address,
        ctx: ssl.SSLContext,
        server_hostname: str = "localhost",
        timeout: float = 5.0,
        settings: dict[int, int] | None = None,
        auto_window: bool = True,
    ) -> H2Client:
        """Over TLS; `ctx` must offer ALPN h2 (see `h2_context`), and the server must pick it."""
        raw = socket.create_connection(address, timeout=timeout)
        sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        return cls(sock, settings, auto_window)

    @classmethod
    def plain(
        cls,
        address: Address,
        timeout: float = 5.0,
        settings: dict[int, int] | None = None,
        auto_window: bool = True,
    ) -> H2Client:
        """Cleartext with prior knowledge (h2c): the preface is the first thing sent."""
        return cls(socket.create_connection(address, timeout=timeout), settings, auto_window)

    def close(self) -> None:
        self.sock.close()

    # sending -------------------------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *frames: Frame) -> None:
        """All `frames` in one write (so the server reads them together)."""
        self.send_raw(b"".join(f.serialize() for f in frames))

    def new_stream(self) -> int:
        stream_id = self.next_stream
        self.next_stream += 2
        return stream_id

    def encode(self, fields: Iterable[tuple[bytes | str, bytes | str]]) -> bytes:
        """An HPACK block of exactly these fields, in order, names as given (uppercase stays uppercase)."""
        pairs = [(_b(n), _b(v)) for n, v in fields]
        return self.encoder.encode(pairs)

    def headers_frames(self, stream_id: int, block: bytes, end_stream: bool = True) -> list[Frame]:
        """HEADERS (and CONTINUATION if the block is larger than a frame) carrying `block`."""
        size = 16384
        pieces = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
        first = HeadersFrame(stream_id, pieces[0])
        if end_stream:
            first.flags.add("END_STREAM")
        frames: list[Frame] = [first]
        frames += [ContinuationFrame(stream_id, p) for p in pieces[1:]]
        frames[-1].flags.add("END_HEADERS")
        return frames

    def send_headers(
        self, stream_id: int, fields: Iterable[tuple[bytes | str, bytes | str]], end_stream: bool = True
    ) -> None:
        self.send(*self.headers_frames(stream_id, self.encode(fields), end_stream))

    def request_fields(
        self,
        path: str,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        authority: str = "localhost",
        scheme: str = "https",
    ) -> list[tuple[bytes | str, bytes | str]]:
        return [(":method", method), (":scheme", scheme), (":path", path), (":authority", authority), *headers]

    def request(
        self,
        path: str,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        scheme: str = "https",
    ) -> int:
        """Open a stream with this request; a `body` follows in one DATA frame with END_STREAM."""
        stream_id = self.new_stream()
        fields = self.request_fields(path, method, headers, scheme=scheme)
        frames = self.headers_frames(stream_id, self.encode(fields), end_stream=body is None)
        if body is not None:
            frames.append(DataFrame(stream_id, body, flags=["END_STREAM"]))
        self.send(*frames)
        return stream_id

    def get(
        self,
        path: str,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        scheme: str = "https",
        timeout: float = 5.0,
    ) -> Stream:
        """One request without a body, and its whole response."""
        return self.response(self.request(path, method, headers, scheme=scheme), timeout)

    def data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.send(DataFrame(stream_id, data, flags=["END_STREAM"] if end_stream else []))

    def rst(self, stream_id: int, code: int = CANCEL) -> None:
        self.send(RstStreamFrame(stream_id, code))

    def ping(self, opaque: bytes) -> None:
        self.send(PingFrame(0, opaque))

    def window_update(self, stream_id: int, increment: int) -> None:
        self.send(WindowUpdateFrame(stream_id, increment))

    # receiving -----------------------------------------------------------------------------------------------
    def stream(self, stream_id: int) -> Stream:
        if stream_id not in self.streams:
            self.streams[stream_id] = Stream(stream_id)
        return self.streams[stream_id]

    def read_frame(self, timeout: float) -> Frame | None:
        """The next frame, already acted on; None once the server has closed. Raises TimeoutError."""
        while len(self.buf) < FRAME_HEADER or len(self.buf) < FRAME_HEADER + _length(self.buf):
            if self.eof:
                return None
            self._fill(timeout)
        frame, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:FRAME_HEADER])))
        frame.parse_body(memoryview(bytes(self.buf[FRAME_HEADER : FRAME_HEADER + length])))
        del self.buf[: FRAME_HEADER + length]
        self.frames.append(frame)
        self._handle(frame)
        return frame

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    def read_until(self, done: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> float:
        """Read frames until `done()`; fails on timeout or if the server closes first. Returns seconds taken."""
        start = time.monotonic()
        while not done():
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise AssertionError(f"not within {timeout}s: {what}; last frames: {self.frames[-5:]}")
            try:
                frame = self.read_frame(left)
            except TimeoutError:
                continue
            if frame is None and not done():
                raise AssertionError(f"connection closed before {what}; last frames: {self.frames[-5:]}")
        return time.monotonic() - start

    def read_for(self, seconds: float) -> list[Frame]:
        """Every frame that arrives within `seconds` (fewer if the server closes)."""
        end = time.monotonic() + seconds
        got: list[Frame] = []
        while (left := end - time.monotonic()) > 0:
            try:
                frame = self.read_frame(left)
            except TimeoutError:
                break
            if frame is None:
                break
            got.append(frame)
        return got

    def response(self, stream_id: int, timeout: float = 5.0) -> Stream:
        """Read until stream `stream_id` ends or is reset."""
        self.read_until(lambda: self.stream(stream_id).finished, timeout, f"stream {stream_id} finished")
        return self.streams[stream_id]

    def expect_goaway(self, timeout: float = 5.0) -> GoAwayFrame:
        self.read_until(lambda: self.goaway is not None, timeout, "GOAWAY")
        assert self.goaway is not None
        return self.goaway

    def expect_closed(self, timeout: float = 5.0) -> float:
        """Read (and keep) frames until the server closes the connection; returns seconds taken."""
        start = time.monotonic()
        while not self.eof:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; last frames: {self.frames[-5:]}")
            try:
                self.read_frame(left)
            except TimeoutError:
                continue
        return time.monotonic() - start

    def received(self, kind: type[Frame], stream_id: int | None = None) -> list[Frame]:
        return [f for f in self.frames if isinstance(f, kind) and (stream_id is None or f.stream_id == stream_id)]

    def _handle(self, frame: Frame) -> None:
        cls = frame.__class__
        if cls is SettingsFrame:
            assert isinstance(frame, SettingsFrame)
            if "ACK" in frame.flags:
                self.settings_acks += 1
            else:
                self.server_settings.update(frame.settings)
                self._quiet_send(SettingsFrame(0, flags=["ACK"]))
        elif cls is HeadersFrame:
            assert isinstance(frame, HeadersFrame)
            self._block = (frame, bytearray(frame.data))
            if "END_HEADERS" in frame.flags:
                self._headers_done()
        elif cls is ContinuationFrame:
            assert self._block is not None, "CONTINUATION without HEADERS"
            self._block[1].extend(frame.data)  # type: ignore[attr-defined]
            if "END_HEADERS" in frame.flags:
                self._headers_done()
        elif cls is DataFrame:
            assert isinstance(frame, DataFrame)
            stream = self.stream(frame.stream_id)
            stream.data += frame.data
            stream.data_frames += 1
            if "END_STREAM" in frame.flags:
                stream.ended = True
            credit = frame.flow_controlled_length
            if self.auto_window and credit:
                updates: list[Frame] = [WindowUpdateFrame(0, credit)]
                if not stream.ended and frame.stream_id not in self.hold:
                    updates.append(WindowUpdateFrame(frame.stream_id, credit))
                self._quiet_send(*updates)
        elif cls is RstStreamFrame:
            assert isinstance(frame, RstStreamFrame)
            self.stream(frame.stream_id).reset = frame.error_code
        elif cls is GoAwayFrame:
            assert isinstance(frame, GoAwayFrame)
            self.goaway = frame
        elif cls is PingFrame:
            assert isinstance(frame, PingFrame)
            if "ACK" in frame.flags:
                self.ping_acks.append(bytes(frame.opaque_data))
            else:
                self._quiet_send(PingFrame(0, frame.opaque_data, flags=["ACK"]))

    def _headers_done(self) -> None:
        assert self._block is not None
        first, block = self._block
        self._block = None
        fields = [(_b(n), _b(v)) for n, v in self.decoder.decode(bytes(block), raw=True)]
        stream = self.stream(first.stream_id)
        status = dict(stream.headers).get(b":status", b"")
        if stream.headers and not status.startswith(b"1"):
            stream.trailers = fields
        else:
            stream.headers = fields
        if "END_STREAM" in first.flags:
            stream.ended = True

    def _quiet_send(self, *frames: Frame) -> None:
        """Automatic replies (ACKs, credit): a server that has already closed is not an error here."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.send(*frames)


def _length(buf: bytearray) -> int:
    return int.from_bytes(buf[:3], "big")


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")
