"""A gunicorn worker that sheds load at once instead of queueing it.

gunicorn's threaded worker (``gthread``) hands every readable connection to a thread pool whose
queue has no bound: with more connections than threads, a request waits in that queue for its turn,
and under overload every answer gets slow (measured with 256 connections: p50 470 ms, p99 714 ms,
no rejection). This worker counts the requests it has handed to the pool and not yet finished; at
``RECSYS_MAX_IN_FLIGHT`` it answers the next request from its event-loop thread, without a pool
thread and without Flask: ``503`` with ``Retry-After: 1`` and the service's JSON error body (only
``POST /ml/...``: ``/health``, ``/ready`` and ``/metrics`` are always served). The
request's bytes are read first (they have arrived: the socket is readable) and the connection is kept
alive, so a client sees a complete answer and no reset; a new connection whose request has not
arrived yet waits on the event loop (not in the pool) and is answered when it has.

A worker accepts no connection until the published versions it serves have loaded (or failed once, so
that a fallback answers), at most ``RECSYS_WORKER_LOAD_WAIT_S``: right after a start, or a restart of one
worker, connections wait in the listen backlog or go to a sibling that is serving, instead of getting
``503 not_ready`` from a worker that is still reading its tables (about 20 s for ML-1M's Feast tables)
while ``/ready``, answered by its sibling, already says 200.

Keep-alive connections are spread evenly over the workers (``online.main.accept_balance``): a worker that
holds more connections than its least-loaded sibling leaves the next one to it for up to 10 ms.

It uses gunicorn 27's connection bookkeeping (``keepalived_conns``, ``pending_conns``), hence the
``gunicorn>=27,<28`` range.

Use it with ``gunicorn -c online/main/gunicorn_conf.py`` (``worker_class`` there). Rejections are
counted in ``recsys_shed_total`` (in ``/metrics`` under the multi-process mode that the config sets).
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import socket
import threading
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from online.main.accept_balance import AcceptBalancer, ConnectionTable

log = logging.getLogger("recsys.online.worker")

SHED_BODY = json.dumps(
    {"error": {"code": "overloaded", "message": "the service is at capacity; retry after 1 s"}},
    separators=(",", ":"),
).encode()


def shed_response(keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    head += b"" if keep_alive else b"Connection: close\r\n"
    return head + b"Content-Length: " + str(len(SHED_BODY)).encode() + b"\r\n\r\n" + SHED_BODY


# made when gunicorn's master loads this class, before it forks the workers: they all share it
CONNECTIONS = ConnectionTable()

MAX_REQUEST_BYTES = 65536
SHED_PATH_PREFIX = b"POST /ml/"  # only the API is shed; health checks and metrics are always served
_CONTENT_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


def peek(sock: socket.socket, n: int) -> bytes | None:
    """The first ``n`` bytes waiting on ``sock``, left in place; None when none have arrived yet."""
    sock.setblocking(False)
    try:
        return sock.recv(n, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    finally:
        sock.setblocking(True)


def read_ready_bytes(sock: socket.socket) -> bytes | None:
    """The bytes already received on ``sock`` without waiting; None when none have arrived yet."""
    chunks: list[bytes] = []
    sock.setblocking(False)
    try:
        while sum(len(c) for c in chunks) < MAX_REQUEST_BYTES:
            try:
                chunk = sock.recv(MAX_REQUEST_BYTES)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.setblocking(True)
    return b"".join(chunks) if chunks else None


def is_one_whole_request(data: bytes) -> bool:
    """Headers and a body of exactly Content-Length bytes (no pipelined request behind it)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or b"transfer-encoding" in head.lower():
        return False
    found = _CONTENT_LENGTH.search(head)
    return len(body) == (int(found.group(1)) if found else 0)


class SheddingThreadWorker(ThreadWorker):
    """``gthread`` with a bound on requests handed to threads; beyond it, 503 from the event loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_in_flight = 0  # set in init_process from the service's settings (0: no bound)
        self.load_wait_s = 0.0  # likewise: how long run() waits for the snapshots before accepting
        self.in_flight = 0
        self._count_lock = threading.Lock()
        self._shed_counter: Any = None
        self.balancer: AcceptBalancer | None = None  # from run(), once this worker accepts connections

    def init_process(self) -> None:
        from data_exchange_center.settings import load_settings

        settings = load_settings()
        self.max_in_flight, self.load_wait_s = settings.max_in_flight, settings.worker_load_wait_s
        try:
            from prometheus_client import Counter

            self._shed_counter = Counter("recsys_shed_total", "requests rejected at once because of overload")
        except ValueError:  # already registered in this process
            self._shed_counter = None
        super().init_process()

    def run(self) -> None:
        self.wait_for_snapshots()
        self.balancer = AcceptBalancer(CONNECTIONS, os.getpid())  # siblings now count on this worker
        try:
            super().run()
        finally:
            self.balancer.close()

    # -- keep-alive connections spread over the workers (online.main.accept_balance) --------------------
    def accept(self, listener: Any) -> None:
        if self.balancer is not None and self.balancer.should_defer(self.nr_conns, time.monotonic()):
            self.set_accept_enabled(False)  # a sibling holds fewer: let it take this one
            return
        super().accept(listener)
        if self.balancer is not None:
            self.balancer.publish(self.nr_conns)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and self.balancer is not None and self.balancer.paused():
            return  # the run loop asks on every pass: the pause holds until it ends
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self.balancer is not None and not self.alive:
            self.balancer.close()  # stopping: it accepts nothing more, so siblings must not leave it any
        if self.balancer is not None and self.balancer.slot is not None:
            self.balancer.publish(self.nr_conns)
            if self.balancer.paused():  # wake when the pause ends, to watch the listening socket again
                timeout = min(timeout, max(self.balancer.paused_until - time.monotonic(), 0.0))
        super().wait_for_and_dispatch_events(timeout)

    def wait_for_snapshots(self) -> None:
        """Until every snapshot of the app's service has loaded or failed once (at most ``load_wait_s``),
        heartbeat instead of accepting connections."""
        from online.service.service import SERVICE_KEY

        service = getattr(self.wsgi, "extensions", {}).get(SERVICE_KEY)
        if service is None or not self.load_wait_s:
            return
        started = time.monotonic()
        while self.alive:
            pending = service.loading()
            if not pending:
                log.info("snapshots loaded, accepting connections", extra={"seconds": time.monotonic() - started})
                return
            if time.monotonic() - started > self.load_wait_s:
                log.warning(
                    "still loading after RECSYS_WORKER_LOAD_WAIT_S, accepting connections anyway",
                    extra={"pending": pending, "seconds": self.load_wait_s},
                )
                return
            self.notify()  # the arbiter's heartbeat: a worker that loads is not a worker that hangs
            time.sleep(0.05)

    def enqueue_req(self, conn: Any) -> None:
        if self.max_in_flight and self.in_flight >= self.max_in_flight and self._shed(conn):
            return
        with self._count_lock:
            self.in_flight += 1
        super().enqueue_req(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        with self._count_lock:
            self.in_flight -= 1
        super().finish_request(conn, fs)

    def _shed(self, conn: Any) -> bool:
        """Answer 503 now; False (serve it as usual) when this cannot be done safely."""
        parser = conn.parser
        if parser is not None and parser.unreader.buf.getvalue():
            return False  # a request already read into the parser: the parser must answer it
        try:
            head = peek(conn.sock, len(SHED_PATH_PREFIX))
            if head is not None and head and not head.startswith(SHED_PATH_PREFIX):
                return False  # /health, /ready, /metrics are always answered
            data = read_ready_bytes(conn.sock) if head else head
        except OSError:
            data = b""
        if data is None:  # connected, request not here yet: wait for it on the event loop
            if conn.initialized:
                return False
            self._wait_for_request(conn)
            return True
        keep_alive = bool(data) and is_one_whole_request(data)
        try:
            if data:
                conn.sock.sendall(shed_response(keep_alive))
        except OSError:
            keep_alive = False
        if self._shed_counter is not None and data:
            self._shed_counter.inc()
        if keep_alive:
            self._keep_alive(conn)
        else:
            self.nr_conns -= 1
            conn.close()
        return True

    # gunicorn 27's own bookkeeping of idle and pending connections (see ThreadWorker.finish_request)
    def _keep_alive(self, conn: Any) -> None:
        conn.sock.setblocking(False)
        conn.set_timeout()
        self.keepalived_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))

    def _wait_for_request(self, conn: Any) -> None:
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))
