"""A small HTTP/1.1 server for the REST API: an asyncio protocol over httptools.

httptools is the C parser uvicorn uses; the server is written here, not
taken from uvicorn, because the REST API runs on one event loop thread and
uvicorn's ASGI layer (a task, a scope and message dicts per request) cost
that thread about 100-150 us per request, three to four times this server's
cost (results/serving.md). Requests go straight to `handler(method, path,
headers, body, reply)`, which calls `reply(status, headers, body)` once, at
once or when its model call completes.

HTTP support: keep-alive and pipelining (answers go out in request order),
HTTP/1.0, chunked request bodies, `Expect: 100-continue`, a body limit (413;
a body somewhat over it is read and dropped, so the client sees the answer),
a limit on the request line and headers (431), an idle keep-alive timeout
(checked by one periodic sweep: a timer per request would cost the loop),
back-pressure (a connection stops being read while its client does not read
its answers), and a graceful shutdown: no new connections, requests in
progress (even half received) are answered, then connections close.
"""

import asyncio
import collections
import http
import logging
import time
from urllib.parse import unquote

import httptools
import orjson

log = logging.getLogger("serving")

_MAX_HEAD_BYTES = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_REASONS[499] = b"Client Closed Request"


def _response(status, headers, body, keep_alive, head):
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    lines.append(b"content-length: %d\r\n" % len(body))
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(body)
    return b"".join(lines)


def _error(status, message):
    return status, [(b"content-type", b"application/json")], orjson.dumps({"error": message})


class _Exchange:
    """One request's place in its connection's answer order."""

    __slots__ = ("data", "keep_alive", "head", "cancel")

    def __init__(self, keep_alive, head):
        self.data = None  # the encoded answer, once there is one
        self.keep_alive = keep_alive
        self.head = head
        self.cancel = None  # drops the request's model call when the client goes away


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.pending = collections.deque()
        self.receiving = False  # a request has begun and is not complete
        self.closing = False
        self.last_active = 0.0  # loop time of the last request data or answer (idle connections are closed)
        self._reset()

    def _reset(self):
        self.url, self.headers, self.chunks, self.size, self.head_bytes = b"", {}, [], 0, 0

    # -- connection ----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.last_active = self.server.loop.time()
        self.server.connections.add(self)

    def connection_lost(self, exc):
        self.closing = True
        self.server.connections.discard(self)
        for exchange in self.pending:
            if exchange.cancel is not None:
                exchange.cancel()
        self.pending.clear()

    def pause_writing(self):  # the client does not read its answers: stop reading its requests
        self.transport.pause_reading()

    def resume_writing(self):
        if not self.closing:
            self.transport.resume_reading()

    def data_received(self, data):
        self.last_active = self.server.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(*_error(400, "Protocol upgrades are not supported"))
        except httptools.HttpParserError as error:
            self._fail(*_error(400, f"Invalid HTTP request: {error}"))

    def idle_for(self, now):
        """Seconds without a request in progress or an answer owed; 0 when busy."""
        return 0.0 if self.pending or self.receiving else now - self.last_active

    def _fail(self, status, headers, body):
        """Answers a request that cannot be read on, then closes the connection."""
        if self.closing:
            return
        self.closing = True
        self.transport.write(_response(status, headers, body, keep_alive=False, head=False))
        self.transport.close()

    def shutdown(self):
        """Closes the connection once the requests in progress are answered (graceful shutdown)."""
        if not self.pending and not self.receiving:
            self.closing = True
            self.transport.close()

    # -- parser callbacks --------------------------------------------------------

    def on_message_begin(self):
        self.receiving = True
        self._reset()

    def on_url(self, url):
        self.url += url
        self._count_head(len(url))

    def on_header(self, name, value):
        self.headers[name.lower()] = value
        self._count_head(len(name) + len(value))

    def _count_head(self, size):
        self.head_bytes += size
        if self.head_bytes > _MAX_HEAD_BYTES:
            self._fail(*_error(431, f"Request line and headers exceed {_MAX_HEAD_BYTES} bytes"))

    def on_headers_complete(self):
        declared = self.headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.server.drain_limit:
            self._fail(*self.server.too_large(int(declared)))
        elif self.headers.get(b"expect", b"").lower() == b"100-continue" and self.parser.get_http_version() == "1.1":
            self.transport.write(_CONTINUE)

    def on_body(self, chunk):
        self.size += len(chunk)
        if self.size <= self.server.max_request_bytes:
            self.chunks.append(chunk)
        elif self.size > self.server.drain_limit:
            self._fail(*self.server.too_large(self.size))

    def on_message_complete(self):
        self.receiving = False
        if self.closing:
            return
        method = self.parser.get_method().decode("ascii", "replace")
        exchange = _Exchange(self.parser.should_keep_alive() and not self.server.stopping, method == "HEAD")
        self.pending.append(exchange)

        def reply(status, headers, body):
            exchange.data = _response(status, headers, body, exchange.keep_alive, exchange.head)
            exchange.cancel = None
            self._flush()

        if self.size > self.server.max_request_bytes:
            reply(*self.server.too_large(self.size))
            return
        try:
            path = unquote(httptools.parse_url(self.url).path.decode("latin-1"))
        except httptools.HttpParserInvalidURLError:
            reply(*_error(400, "Invalid request target"))
            return
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        exchange.cancel = self.server.handler(method, path, self.headers, body, reply)

    def _flush(self):
        """Writes the answers that are ready, in request order."""
        pending = self.pending
        while pending and pending[0].data is not None and not self.closing:
            exchange = pending.popleft()
            self.transport.write(exchange.data)
            if not exchange.keep_alive:
                self.closing = True
                self.transport.close()
        self.last_active = self.server.loop.time()
        if self.server.stopping:
            self.shutdown()


class HttpServer:
    """Serves `handler` on a listening socket until `stop` is set, then shuts down gracefully."""

    def __init__(self, handler, max_request_bytes, keep_alive_seconds=30.0, shutdown_grace_seconds=30.0):
        self.handler = handler
        self.max_request_bytes = max_request_bytes
        self.drain_limit = max_request_bytes + 64 * 1024 * 1024
        self.keep_alive_seconds = keep_alive_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.connections = set()
        self.stopping = False
        self.loop = None

    def too_large(self, size):
        return _error(413, f"Request body of {size} bytes exceeds the limit of {self.max_request_bytes} bytes")

    def _close_idle_connections(self):
        now = self.loop.time()
        for connection in list(self.connections):
            if connection.idle_for(now) > self.keep_alive_seconds:
                connection.shutdown()

    async def serve(self, sock, stop):
        self.loop = loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpProtocol(self), sock=sock, backlog=2048)
        try:
            # One sweep for idle connections, not a timer per connection (a timer per request costs the loop).
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), min(self.keep_alive_seconds / 4, 1.0))
                except asyncio.TimeoutError:
                    self._close_idle_connections()
        finally:
            self.stopping = True
            server.close()  # no new connections
            for connection in list(self.connections):
                connection.shutdown()
            deadline = time.monotonic() + self.shutdown_grace_seconds
            while self.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for connection in list(self.connections):
                log.warning("closing a connection whose request did not finish within the shutdown grace period")
                connection.transport.close()
