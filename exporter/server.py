"""The exporter's HTTP server, carrying exporter/endpoints.py's answers.

The port is open to whoever can reach the pod, so a connection must stay cheap whoever opens it.
One selector thread accepts connections and reads request heads without blocking: an idle or
slow socket costs a file descriptor and a few bytes, never a thread, and is closed at its
deadline (past ``max_connections`` the oldest is closed). A complete head goes to a fixed pool
of workers through a bounded queue, or is answered 503 at once when the queue is full. A client
that hangs up mid-response is one debug line. ``drain`` keeps all of it serving after the
sources stopped, so that the final counts can be scraped.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import queue
import re
import selectors
import socket
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from analyzer.errors import WslogError
from exporter.endpoints import Endpoints, Readiness, RenderCache
from exporter.settings import HttpSettings, Listen

__all__ = ["HttpServer", "serve"]

log = logging.getLogger("wslog.exporter.http")
MAX_HEAD = 16 * 1024
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_SWEEP_S = 0.25


def _canned(status: str) -> bytes:
    head = f"HTTP/1.1 {status}\r\nServer: wslog\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    return head.encode()


_BUSY = _canned("503 Service Unavailable")
_TOO_LARGE = _canned("431 Request Header Fields Too Large")


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    address: tuple[Any, ...]
    deadline: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)
    served: int = 0

    def has_head(self) -> bool:
        return _END_OF_HEAD.search(self.buffer) is not None

    def take_head(self) -> bytes:
        end = _END_OF_HEAD.search(self.buffer)
        assert end is not None, "dispatched without a complete head"
        head = bytes(self.buffer[: end.end()])
        del self.buffer[: end.end()]
        return head


class _Writer(io.BufferedIOBase):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return memoryview(data).nbytes


class _Handler(BaseHTTPRequestHandler):
    """One request whose head was already read; answers it on the connection's socket."""

    protocol_version = "HTTP/1.1"
    server_version = "wslog"

    def __init__(self, conn: _Connection, endpoints: Endpoints, last: bool) -> None:
        # Not BaseRequestHandler.__init__, which reads and answers from the constructor.
        self.client_address = conn.address
        self.connection = self.request = conn.sock
        self.rfile = io.BytesIO(conn.take_head())
        self.wfile = _Writer(conn.sock)
        self.endpoints, self.last = endpoints, last
        self.close_connection = True

    def respond(self) -> bool:
        """Answer the request; whether the connection may carry another."""
        self.handle_one_request()
        return not self.close_connection

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        response = self.endpoints.answer(path, self.headers.get("Accept-Encoding", ""))
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.last:
            self.send_header("Connection", "close")
        self.end_headers()
        if with_body:
            self.wfile.write(response.body)

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: " + format, self.client_address[0], *args)


class ListenError(WslogError):
    """The listen address cannot be bound; the message says why and what to do."""

    def __init__(self, listen: Listen, error: OSError) -> None:
        fix = _LISTEN_FIXES.get(
            error.errno or 0, "check --listen (HOST:PORT, e.g. 0.0.0.0:9090 or 127.0.0.1:0)"
        )
        host = f"[{listen.host}]" if ":" in listen.host else listen.host
        where = f"{host}:{listen.port}"
        super().__init__(f"--listen {where}: {error.strerror or error}; {fix}")


_LISTEN_FIXES = {
    errno.EADDRINUSE: "another process listens there: stop it, or choose another port "
    "(--listen 127.0.0.1:0 takes any free one)",
    errno.EADDRNOTAVAIL: "this machine has no such address: use 0.0.0.0 (every address) or "
    "127.0.0.1",
    errno.EACCES: "ports below 1024 need privileges: use a port such as 9090",
}


class HttpServer:
    """Serves ``Endpoints`` on one listening socket with bounded threads (module docstring)."""

    def __init__(self, listen: Listen, settings: HttpSettings, endpoints: Endpoints) -> None:
        self.settings, self.endpoints = settings, endpoints
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        address = (listen.host, listen.port)
        try:
            self._listener = socket.create_server(address, family=family, backlog=settings.backlog)
        except OSError as error:
            raise ListenError(listen, error) from error
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.setblocking(False)
            if sock is not self._wake_w:
                self._selector.register(sock, selectors.EVENT_READ)
        self._waiting: OrderedDict[_Connection, None] = OrderedDict()  # oldest deadline first
        self._returned: deque[_Connection] = deque()  # kept alive by a worker, to wait again
        self._ready: queue.Queue[_Connection | None] = queue.Queue()  # bounded in _dispatch
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._select_loop, name="wslog-http", daemon=True)]
        for i in range(settings.workers):
            self._threads.append(
                threading.Thread(target=self._work, name=f"wslog-http-{i}", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def drain(self, seconds: float) -> None:
        """Keep serving ``seconds`` more with /readyz saying draining, /metrics rendered afresh:
        the sources have stopped and these are the final counts."""
        if seconds <= 0:
            return
        self.endpoints.metrics.invalidate()  # before /readyz says so: no stale render after it
        self.endpoints.draining.set()
        log.info("draining: serving the final counts", extra={"seconds": seconds})
        time.sleep(seconds)

    def close(self) -> None:
        """Close the port and every connection; requests in hand are answered first."""
        self._closing.set()
        self._wake()
        self._threads[0].join(timeout=5)
        with contextlib.suppress(queue.Empty):  # workers take from the queue meanwhile
            while conn := self._ready.get_nowait():
                conn.sock.close()
        for _ in self._threads[1:]:
            self._ready.put(None)
        for thread in self._threads[1:]:
            thread.join(timeout=self.settings.timeout_s + 1)
        for conn in self._returned:
            conn.sock.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    # --- the selector thread ---------------------------------------------------------------

    def _select_loop(self) -> None:
        try:
            while not self._closing.is_set():
                for key, _ in self._selector.select(timeout=_SWEEP_S):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._take_back()
                    else:
                        self._read(key.data)
                self._expire(time.monotonic())
        finally:
            for conn in list(self._waiting):
                self._drop(conn)
            self._selector.close()
            self._listener.close()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self._listener.accept()
            except OSError:  # nothing more to accept (or out of descriptors: retried next round)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._wait(_Connection(sock, address))

    def _wait(self, conn: _Connection) -> None:
        """Hold ``conn`` until its next request head arrives or its deadline passes."""
        conn.deadline = time.monotonic() + self.settings.timeout_s
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._waiting[conn] = None
        if len(self._waiting) > self.settings.max_connections:
            self._drop(next(iter(self._waiting)))

    def _read(self, conn: _Connection) -> None:
        if conn not in self._waiting:  # dropped earlier in this round
            return
        try:
            data = conn.sock.recv(MAX_HEAD)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.buffer += data
        if not data:
            self._drop(conn)
        elif conn.has_head():
            self._unwait(conn)
            self._dispatch(conn)
        elif len(conn.buffer) > MAX_HEAD:
            self._unwait(conn)
            _refuse(conn, _TOO_LARGE)

    def _dispatch(self, conn: _Connection) -> None:
        if self._ready.qsize() >= self.settings.queue:
            _refuse(conn, _BUSY)
        else:
            self._ready.put(conn)

    def _take_back(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._returned:
            conn = self._returned.popleft()
            if conn.has_head():  # pipelined
                self._dispatch(conn)
            else:
                self._wait(conn)

    def _expire(self, now: float) -> None:
        while self._waiting:
            oldest = next(iter(self._waiting))
            if oldest.deadline > now:
                return
            self._drop(oldest)

    def _unwait(self, conn: _Connection) -> None:
        self._selector.unregister(conn.sock)
        del self._waiting[conn]

    def _drop(self, conn: _Connection) -> None:
        self._unwait(conn)
        conn.sock.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_w.send(b"\0")

    # --- the workers -----------------------------------------------------------------------

    def _work(self) -> None:
        while (conn := self._ready.get()) is not None:
            if self._serve(conn) and not self._closing.is_set():
                conn.sock.setblocking(False)
                self._returned.append(conn)
                self._wake()
            else:
                conn.sock.close()

    def _serve(self, conn: _Connection) -> bool:
        """Answer one request; whether the connection stays open for another."""
        conn.served += 1
        limit = self.settings.max_requests_per_connection
        last = conn.served >= limit or self._closing.is_set()
        try:
            conn.sock.settimeout(self.settings.timeout_s)
            return _Handler(conn, self.endpoints, last).respond() and not last
        except OSError as exc:  # the client hung up, reset, or stopped reading
            log.debug("http %s: client went away: %s", conn.address[0], exc)
        except Exception:
            log.exception("http %s: answering a request failed", conn.address[0])
        return False


def _refuse(conn: _Connection, response: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.sock.send(response)
    conn.sock.close()


def serve(
    listen: Listen, settings: HttpSettings, registry: CollectorRegistry, readiness: Readiness
) -> HttpServer:
    """Start serving on daemon threads; ``close()`` the returned server to stop."""
    cache = RenderCache(lambda: generate_latest(registry), settings.min_render_interval_s)
    return HttpServer(listen, settings, Endpoints(cache, readiness))
