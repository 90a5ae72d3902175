"""Hot version switch: a cheap check at most every few seconds, a background load, an atomic swap.

``Refreshing`` holds one immutable snapshot; requests only ever call ``get()``. The service's
background thread calls ``maybe_refresh()``: at most every ``check_interval_s`` it runs the cheap
``probe`` (read a pointer file, a Redis key, an alias...), never on a request's clock. When it names
a version other than the one held, a loading thread runs ``load(version)`` and then replaces the
reference in one assignment, so a request sees either the old snapshot or the new one, never a mix,
and no request waits for a load. A failed load keeps the old
snapshot and is retried at the next check. Loading threads belong to the process that started them:
after a fork (gunicorn --preload) the child starts its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("recsys.online.versions")
CHECK_INTERVAL_S = 2.0


class NotLoaded(Exception):
    """A role has no snapshot yet (artifacts not published, or still loading)."""


class Refreshing(Generic[T]):
    def __init__(
        self,
        name: str,
        probe: Callable[[], str | None],
        load: Callable[[str], T],
        check_interval_s: float = CHECK_INTERVAL_S,
        on_switch: Callable[[str, str | None, str], None] | None = None,
    ) -> None:
        self.name = name
        self._probe = probe
        self._load = load
        self.check_interval_s = check_interval_s
        self.on_switch = on_switch  # called with (name, previous version, new version) after a swap
        self._snapshot: T | None = None
        self.version: str | None = None
        self.last_error: str | None = None
        self._check_lock = threading.Lock()
        self._next_check = 0.0
        self._loading_pid: int | None = None  # pid of the process whose thread is loading

    # -- what requests use --------------------------------------------------------------------------
    def get(self) -> T:
        snapshot = self._snapshot
        if snapshot is None:
            raise NotLoaded(f"{self.name}: {self.last_error or 'not loaded yet'}")
        return snapshot

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    def maybe_refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_check or not self._check_lock.acquire(blocking=False):
            return
        try:
            # until a first version is loaded, look again sooner
            interval = self.check_interval_s if self._snapshot is not None else min(self.check_interval_s, 0.5)
            self._next_check = now + interval
            self._check()
        finally:
            self._check_lock.release()

    # -- loading ------------------------------------------------------------------------------------
    def _check(self) -> None:
        if self._loading_pid == os.getpid():
            return  # a load is running in this process
        try:
            version = self._probe()
        except Exception as exc:  # a failing probe must not fail the request that ran it
            self._record_error(f"version check failed: {exc}")
            return
        if version is None:
            self._record_error("nothing published yet")
        elif version != self.version:
            self._loading_pid = os.getpid()
            threading.Thread(target=self._load_in_background, args=(version,), daemon=True).start()

    def _load_in_background(self, version: str) -> None:
        started = time.perf_counter()
        try:
            snapshot = self._load(version)
        except Exception as exc:
            self._record_error(f"loading version {version} failed: {type(exc).__name__}: {exc}")
            log.exception("%s: loading version %s failed; still serving %s", self.name, version, self.version)
        else:
            self._swap(version, snapshot)
            log.info("%s: switched to version %s in %.2f s", self.name, version, time.perf_counter() - started)
        finally:
            self._loading_pid = None

    def _swap(self, version: str, snapshot: T) -> None:
        previous = self.version
        self._snapshot = snapshot  # one reference assignment: requests see old or new, never a mix
        self.version = version
        self.last_error = None
        if self.on_switch is not None:
            self.on_switch(self.name, previous, version)

    def _record_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s: %s", self.name, message)
        self.last_error = message
