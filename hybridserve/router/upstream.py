"""A lean keep-alive HTTP/1.1 client for the router's hop to its instances.

The router forwards every fleet request, so the hop's cost is the router's cost. A general
client (aiohttp) spends more on its abstractions than on the bytes; this one writes a prebuilt
request head and parses the answer with httptools on a pooled asyncio Protocol per connection.
A request that fails on a reused connection before any answer came back (the server closed it
while idle) is sent again once on a fresh connection; any other failure is the instance's.
`Upstream` is the router's state of one instance: its pool, requests in flight, and the
completion table scaled by the latency correction it learns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import httptools

from hybridserve.fleet import Endpoint

CORRECTION_EWMA = 0.05  # weight of one observation in an instance's latency correction
CORRECTION_BOUNDS = (0.5, 8.0)
IDLE_S = 4.0  # below uvicorn's 5 s keep-alive: never reuse a connection the server may drop


class UpstreamError(ConnectionError):
    """The instance could not be reached or dropped the connection mid-request: it is dead."""


class UpstreamTimeout(UpstreamError):
    """The instance took the request but gave no answer within the timeout: it is slow, not
    dead (its connection is closed all the same, so the answer cannot arrive late)."""


class _Conn(asyncio.Protocol):
    __slots__ = (
        "transport",
        "parser",
        "waiter",
        "status",
        "wanted",
        "headers",
        "chunks",
        "closed",
        "keep",
        "got_bytes",
        "idle_since",
        "_name",
    )

    def __init__(self, wanted: frozenset[bytes]) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.wanted = wanted
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.closed = False
        self.keep = True
        self.got_bytes = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"bad HTTP response: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamError(f"connection lost: {exc or 'closed by the instance'}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in self.wanted:
            self.headers[name] = value

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep = self.parser.should_keep_alive()
        w, self.waiter = self.waiter, None
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        if w is not None and not w.done():
            w.set_result((self.status, self.headers, body))

    def _fail(self, exc: Exception) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def send(self, raw: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.headers = {}
        self.chunks = []
        self.got_bytes = False
        assert self.transport is not None
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(conn: _Conn, expired: list[bool]) -> None:
    expired.append(True)
    conn.close()


class UpstreamPool:
    """Pooled connections to one instance (`http://host:port`)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        max_idle: int = 256,
        response_headers: tuple[bytes, ...] = (b"content-type", b"inference-header-content-length"),
    ) -> None:
        if not url.startswith("http://"):
            raise ValueError(f"upstream URL must be http://host:port, got {url!r}")
        hostport = url[len("http://") :].rstrip("/")
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"upstream URL must name host and port, got {url!r}")
        self.host, self.port = host, int(port)
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        self._idle: list[_Conn] = []
        self._wanted = frozenset(response_headers)
        self._host_line = b"Host: " + hostport.encode() + b"\r\n"

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Conn(self._wanted), self.host, self.port
            )
        except OSError as e:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {e}") from None
        return conn

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        return None

    async def request(
        self, method: bytes, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """Status, the wanted response headers (lower-case names) and the body."""
        head = [method, b" ", path.encode(), b" HTTP/1.1\r\n", self._host_line]
        if headers:
            for k, v in headers.items():
                head.append(f"{k}: {v}\r\n".encode())
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        raw = b"".join(head) + body
        conn = self._take_idle()
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                conn = await self._connect()
            loop = asyncio.get_running_loop()
            expired: list[bool] = []
            timer = loop.call_later(self.timeout_s, _expire, conn, expired)
            try:
                status, hdrs, payload = await conn.send(raw)
            except UpstreamError:
                conn.close()
                if expired:
                    raise UpstreamTimeout(
                        f"{self.host}:{self.port} gave no answer within {self.timeout_s:g} s"
                    ) from None
                if reused and not conn.got_bytes:  # the server dropped an idle connection
                    conn, reused = None, False
                    continue
                raise
            finally:
                timer.cancel()
            if conn.keep and len(self._idle) < self.max_idle:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
            return status, hdrs, payload
        raise UpstreamError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class Upstream:
    """Router-side state of one ready instance.

    `outstanding` counts its requests in flight, for every model. An instance routed for one
    model only predicts from that and `table` (that model's); one holding several keeps a
    `Slot` per model (router/models.py) and `busy`, the unscaled ms its queue needs to drain."""

    __slots__ = ("endpoint", "pool", "outstanding", "base", "table", "ratio", "model", "slots",
                 "busy")  # fmt: skip

    def __init__(
        self, endpoint: Endpoint, base: list[float], timeout_s: float, model: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.pool = UpstreamPool(endpoint.url, timeout_s=timeout_s)
        self.outstanding = 0
        self.base = base
        self.table = base
        self.ratio = 1.0
        self.model = model  # the one model `base` is for (routed solo), or None
        self.slots: dict | None = None  # model name -> Slot, once it holds several
        self.busy = 0.0

    def learn(self, predicted_ms: float, observed_ms: float) -> None:
        r = observed_ms / max(predicted_ms, 1e-3)
        lo, hi = CORRECTION_BOUNDS
        self.ratio = min(hi, max(lo, self.ratio + CORRECTION_EWMA * (r - self.ratio)))

    def rescale(self) -> None:
        self.table = [x * self.ratio for x in self.base]
