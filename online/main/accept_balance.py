"""Keep-alive connections spread evenly over gunicorn's workers.

Every worker waits on the one listening socket, and the first to call ``accept()`` gets the connection.
A client that opens its keep-alive connections in a burst (a load balancer's pool, a load generator) then
mostly lands on one worker: 32 connections opened at once to two workers went 31/1, 32/0, 29/3 (the tiny
test artifacts, an idle 2-core machine). A connection stays with the worker that accepted it, so one
worker serves nearly everything while its sibling idles: ML-1M on the compose profile gave 214 req/s at
saturation in such runs against 375 with the connections split.

``ConnectionTable`` is a small shared-memory table, made in gunicorn's master before it forks the workers,
where each worker publishes how many connections it holds. A worker that holds more than ``SLACK`` more
than its least-loaded live sibling leaves the next connection to that sibling: it stops watching the
listening socket for ``PAUSE_S``. If the connection is still waiting after ``MAX_DEFER_S`` (the sibling is
busy, stuck or gone) the worker accepts it anyway, so balancing never holds a client back by more than that.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import time

SLOTS = 64  # workers per server at most (more are served, unbalanced)
SLACK = 1  # connections a worker may hold above its least-loaded sibling before it defers
PAUSE_S = 0.001  # how long a deferring worker stops watching the listening socket
MAX_DEFER_S = 0.01  # a connection waits at most this long for a sibling before this worker takes it
EPISODE_S = 0.05  # deferrals further apart than this belong to different waiting connections


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ConnectionTable:
    """(pid, connections) per worker, in memory that forked workers share with the master."""

    def __init__(self, slots: int = SLOTS) -> None:
        self._cells = multiprocessing.RawArray(ctypes.c_long, 2 * slots)
        self._lock = multiprocessing.Lock()
        self.slots = slots

    def claim(self, pid: int) -> int | None:
        """A free slot (or one whose worker has died) for ``pid``; None when every slot is taken."""
        with self._lock:
            for slot in range(self.slots):
                owner = self._cells[2 * slot]
                if owner in (0, pid) or not alive(owner):
                    self._cells[2 * slot], self._cells[2 * slot + 1] = pid, 0
                    return slot
        return None

    def release(self, slot: int, pid: int) -> None:
        with self._lock:
            if self._cells[2 * slot] == pid:
                self._cells[2 * slot], self._cells[2 * slot + 1] = 0, 0

    def publish(self, slot: int, connections: int) -> None:
        self._cells[2 * slot + 1] = connections  # one aligned word: readers see the old or the new count

    def least_of_others(self, slot: int) -> int | None:
        """The fewest connections any other live worker holds (None: no other worker)."""
        least = None
        for other in range(self.slots):
            owner = self._cells[2 * other]
            if other == slot or owner == 0:
                continue
            count = self._cells[2 * other + 1]
            if (least is None or count < least) and alive(owner):
                least = count
        return least


class AcceptBalancer:
    """One worker's side: whether to leave the connection that is waiting to a sibling."""

    def __init__(self, table: ConnectionTable, pid: int) -> None:
        self.table, self.pid = table, pid
        self.slot = table.claim(pid)
        self.paused_until = 0.0
        self._episode_start = 0.0
        self._last_deferral = -1.0
        self._least_seen: int | None = None

    def publish(self, connections: int) -> None:
        if self.slot is not None:
            self.table.publish(self.slot, connections)

    def should_defer(self, connections: int, now: float) -> bool:
        """True (and paused for ``PAUSE_S``) when a sibling holds fewer connections by more than ``SLACK``
        and the waiting connection has not waited ``MAX_DEFER_S`` for it yet."""
        if self.slot is None:
            return False
        least = self.table.least_of_others(self.slot)
        if least is None or connections <= least + SLACK:
            return False
        if now - self._last_deferral > EPISODE_S or least != self._least_seen:
            self._episode_start = now  # a new connection is waiting, or the sibling took the last one
        self._last_deferral, self._least_seen = now, least
        if now - self._episode_start >= MAX_DEFER_S:
            return False  # the sibling did not take it: serve it here
        self.paused_until = now + PAUSE_S
        return True

    def paused(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.paused_until

    def close(self) -> None:
        if self.slot is not None:
            self.table.release(self.slot, self.pid)
            self.slot = None
