"""``liverank bench e2e``: the whole pipeline on a whole log, a request before every watch.

    liverank bench e2e --scale twitch100k --out out/e2e             # what `make bench-e2e` runs
    liverank bench e2e --scale twitch100k --workers 2 --out out/e2e-2w
    liverank bench e2e --scale tiny --out /tmp/e2e                   # about half a minute

1. Data: ``out/data/<scale>.csv`` (generated if missing, as the soak does) or ``--data``; a
   randomly initialised model over its streamers (same shapes and cost as a trained one) or
   ``--model``. ``--steps N`` replays only the log's first N steps.
2. ``--workers N`` ``liverank serve`` processes in one consumer group (one app id), each
   with its own store under ``OUT/w<i>``, all ready before the clock starts.
3. The clock starts with the replay (``--speed max``, every watch with a request before
   it). An independent reader (a librdkafka consumer on ``recommendations``, from the
   beginning) counts the answers per request id: unanswered, duplicates, answers from the
   popularity fallback (an empty window), produce-to-publish latency (a backlog's here).
4. Every ``--sample-s`` seconds a row of ``e2e.csv``: requests sent, answered and answers/s
   (the reader's), outstanding requests, the workers' consumer lag (their /metrics; tansu's
   high watermarks can read low), RSS and CPU of the workers and the broker.
5. Done when every request has an answer, or when none came for ``--stall-s``. Wall time =
   replay start to the last answer's publish time. ``summary.json`` and ``e2e.png``; then
   the workers stop and, on tansu (every record in memory), the run's topics are deleted:
   the broker's RSS before and after is in the summary. The embedded broker's output is
   kept in ``OUT/tansu.log``; if it exits during the run, the run stops and says so.

Uses LIVERANK_KAFKA_BOOTSTRAP if set (then no broker RSS), else an embedded tansu. Exits 1
when a request was left unanswered.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import msgspec
import typer

from liverank.cli.bench_soak import (
    SoakOptions,
    cpu_pct,
    percentile,
    read_cpu_s,
    read_load1,
    read_rss_mb,
)
from liverank.core.settings import Settings

logger = logging.getLogger(__name__)

STALL_S = 300.0
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class E2EOptions:
    scale: str = "twitch100k"
    data: Path | None = None
    seed: int = 0
    model: Path | None = None
    workers: int = 1
    steps: int | None = None  # only the first N steps of the log
    store: str = "rocksdb://"
    sample_s: float = 10.0
    stall_s: float = STALL_S
    out: Path = Path("out/e2e")
    keep_topics: bool = False


@dataclass
class Sample:
    """One row of ``e2e.csv``; None is an empty cell."""

    elapsed_s: float
    phase: str  # "replay" while the replay sends, "drain" after
    requests_sent: int = 0
    answered: int = 0
    answers_per_s: float | None = None
    outstanding: int = 0  # requests sent and not answered yet
    lag: float | None = None  # sum of the workers' consumer lag (their /metrics)
    workers_rss_mb: float | None = None  # sum over the workers
    broker_rss_mb: float | None = None
    workers_cpu_pct: float | None = None  # sum, % of one core
    broker_cpu_pct: float | None = None
    driver_cpu_pct: float | None = None  # this process: replay, reader, sampler
    load1: float | None = None
    p50_ms: float | None = None  # produce-to-publish of the interval's answers
    p99_ms: float | None = None


CSV_FIELDS = tuple(f.name for f in fields(Sample))


class _Answer(msgspec.Struct):
    """The fields of an answer the reader needs (the rest is skipped, not decoded)."""

    request_id: str
    trigger: str
    published_ms: int
    produced_ms: int | None = None
    fallback: bool = False


@dataclass
class AnswerCounter:
    """Answers per request id ("req:<row>") of the ``expected`` rows; fed by `read`."""

    expected: Any  # np.ndarray of bool, indexed by row: a request was sent for it
    answered: int = 0
    duplicates: int = 0
    unexpected: int = 0  # answers to a request this run did not send
    fallback: int = 0
    last_published_ms: int = 0
    latency_ms: array = field(default_factory=lambda: array("d"))
    lock: threading.Lock = field(default_factory=threading.Lock)
    _seen: Any = None

    def __post_init__(self) -> None:
        import numpy as np

        self._seen = np.zeros(len(self.expected), dtype=bool)

    def add(self, raw: bytes, decoder: msgspec.json.Decoder[_Answer]) -> None:
        a = decoder.decode(raw)
        if a.trigger != "request":
            return
        kind, _, row_text = a.request_id.partition(":")
        row = int(row_text) if kind == "req" and row_text.isdigit() else -1
        with self.lock:
            if not 0 <= row < len(self.expected) or not self.expected[row]:
                self.unexpected += 1
            elif self._seen[row]:
                self.duplicates += 1
            else:
                self._seen[row] = True
                self.answered += 1
                self.fallback += a.fallback
                self.last_published_ms = max(self.last_published_ms, a.published_ms)
                if a.produced_ms is not None:
                    self.latency_ms.append(float(a.published_ms - a.produced_ms))


def read_answers(settings: Settings, counter: AnswerCounter, stop: threading.Event,
                 errors: list[str]) -> None:
    """Read ``recommendations`` from the beginning into ``counter`` until ``stop``."""
    from confluent_kafka import KafkaError

    from liverank.broker import kafka

    topic = settings.topic(kafka.RECOMMENDATIONS)
    decoder = msgspec.json.Decoder(_Answer)
    try:
        consumer = kafka.follow_from_start(settings, topic)
        try:
            while not stop.is_set():
                for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                    err = msg.error()
                    if err is None:
                        counter.add(msg.value() or b"", decoder)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        logger.warning("e2e answer reader: %s", err)
        finally:
            consumer.close()
    except Exception as exc:  # the run ends as stalled; the summary says why
        logger.exception("e2e answer reader failed")
        errors.append(repr(exc))


class _Sampler:
    """Every ``every_s`` seconds one `Sample`, appended to ``samples`` and to the CSV."""

    def __init__(self, workers: Sequence[Any], broker_pid: int | None, counter: AnswerCounter,
                 csv_path: Path, every_s: float, t0: float) -> None:
        self.workers, self.broker_pid, self.counter = workers, broker_pid, counter
        self.every_s, self.t0 = every_s, t0
        self.phase, self.requests_sent = "replay", 0
        self.samples: list[Sample] = []
        self._pids: dict[str, int | None] = {f"w{i}": w.proc.pid for i, w in enumerate(workers)}
        self._pids |= {"broker": broker_pid, "driver": os.getpid()}
        self._cpu = {k: read_cpu_s(p) for k, p in self._pids.items()}
        self._last = (t0, 0, 0)  # time, answered, latency values seen
        self._stop = threading.Event()
        self._file = open(csv_path, "w", newline="")  # noqa: SIM115 - closed in stop()
        self._csv = csv.DictWriter(self._file, fieldnames=CSV_FIELDS)
        self._csv.writeheader()
        self._thread = threading.Thread(target=self._run, name="e2e-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> Sample:
        now = time.monotonic()
        c = self.counter
        with c.lock:
            answered, lat = c.answered, c.latency_ms[self._last[2]:]
            n_lat = len(c.latency_ms)
        cpu = {k: read_cpu_s(p) for k, p in self._pids.items()}
        dt = now - self._last[0]
        pct = {k: cpu_pct(self._cpu[k], cpu[k], dt) for k in cpu}
        self._cpu = cpu
        metrics = [w.metrics() for w in self.workers]
        lags = [m["lag"] for m in metrics if "lag" in m]
        rss = [read_rss_mb(w.proc.pid) for w in self.workers]
        worker_cpu = [pct[f"w{i}"] for i in range(len(self.workers))]
        s = Sample(
            elapsed_s=now - self.t0, phase=self.phase, requests_sent=self.requests_sent,
            answered=answered,
            answers_per_s=(answered - self._last[1]) / dt if dt > 0 else None,
            outstanding=self.requests_sent - answered, lag=sum(lags) if lags else None,
            workers_rss_mb=_total(rss), broker_rss_mb=read_rss_mb(self.broker_pid),
            workers_cpu_pct=_total(worker_cpu), broker_cpu_pct=pct["broker"],
            driver_cpu_pct=pct["driver"], load1=read_load1(),
            p50_ms=percentile(list(lat), 50), p99_ms=percentile(list(lat), 99))
        self._last = (now, answered, n_lat)
        self.samples.append(s)
        self._csv.writerow({k: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else v)
                            for k, v in asdict(s).items()})
        self._file.flush()
        typer.echo(_progress_line(s))
        return s

    def stop(self) -> None:
        """Stop sampling after one last sample (once; later calls do nothing)."""
        self._stop.set()
        self._thread.join(timeout=30)
        if not self._file.closed:
            self.sample()
            self._file.close()


def _total(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _progress_line(s: Sample) -> str:
    def f(v: float | None, fmt: str = ".0f") -> str:
        return "-" if v is None else format(v, fmt)

    return (f"[{s.phase} {s.elapsed_s:6.0f} s] sent {s.requests_sent:,} answered "
            f"{s.answered:,} ({f(s.answers_per_s)}/s), outstanding {s.outstanding:,}, lag "
            f"{f(s.lag)}; RSS MB workers {f(s.workers_rss_mb)} broker {f(s.broker_rss_mb)}; "
            f"cpu % workers {f(s.workers_cpu_pct)} broker {f(s.broker_cpu_pct)} driver "
            f"{f(s.driver_cpu_pct)}, load {f(s.load1, '.1f')}")


# --- the run --------------------------------------------------------------------------------

def run_e2e(opts: E2EOptions) -> dict[str, Any]:
    """The whole run (see the module docstring); writes e2e.csv, e2e.png and summary.json
    under ``opts.out`` and returns the summary."""
    import contextlib
    import shutil

    from liverank.broker import kafka
    from liverank.broker.embedded import configured_or_embedded
    from liverank.cli.bench_service import _fresh
    from liverank.cli.bench_soak import _data, _model, _worker_class
    from liverank.model.data.timeline import build_timeline
    from liverank.model.data.twitch import load_interactions
    from liverank.replay.producer import replay_to_kafka

    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    data = opts.data or _data(SoakOptions(scale=opts.scale, seed=opts.seed))
    ds = load_interactions(data)
    model = opts.model or _model(SoakOptions(scale=opts.scale, out=out), ds)
    Worker = _worker_class(opts.store)  # noqa: N806 - a class
    with contextlib.ExitStack() as stack:
        base, broker = configured_or_embedded(stack, log_path=out / "tansu.log",
                                              workers=opts.workers)
        broker_pid = broker.process.pid if broker is not None else None
        settings = _fresh(base, "e2e")
        to_step = None if opts.steps is None else opts.steps - 1
        tl = build_timeline(ds, to_step=to_step, epoch_ms=settings.epoch_ms)
        expected, requests_before = _requests(tl, len(ds))
        n_requests = int(requests_before[-1])
        typer.echo(f"log {data}: {len(ds):,} rows, {n_requests:,} requests over steps "
                   f"0..{tl.last_step}; {opts.workers} worker(s), store {opts.store}, "
                   f"model {model}")
        kafka.ensure_topics(settings)
        workers = []
        for i in range(opts.workers):  # one app id: one consumer group
            work = out / f"w{i}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            workers.append(Worker(settings, model, work, "e2e", work / "data"))
            stack.callback(workers[-1].stop)  # stopped before the broker (last in, first out)
        _wait_all_ready(workers)
        counter, stop = AnswerCounter(expected), threading.Event()
        errors: list[str] = []
        reader = threading.Thread(target=read_answers, name="e2e-answers",
                                  args=(settings, counter, stop, errors), daemon=True)
        reader.start()
        stack.callback(reader.join, 10)
        stack.callback(stop.set)
        t0, start_ms = time.monotonic(), time.time_ns() // 1_000_000
        sampler = _Sampler(workers, broker_pid, counter, out / "e2e.csv", opts.sample_s, t0)
        stack.callback(sampler.stop)

        def on_block(events_done: int, _step: int, _report: Any) -> None:
            sampler.requests_sent = int(requests_before[events_done])
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"a worker exited with {w.proc.returncode}; see "
                                       f"{w.log}")
            if broker is not None and not broker.alive():
                raise RuntimeError(_broker_gone(broker))

        report = replay_to_kafka(tl, settings, on_block=on_block)
        if not report.ok:
            raise RuntimeError(f"e2e replay failed: {report.first_error}")
        replay_s = time.monotonic() - t0
        sampler.requests_sent, sampler.phase = n_requests, "drain"
        typer.echo(f"replay: {report.messages:,} messages in {replay_s:.1f} s; draining")
        stalled = _drain(counter, n_requests, workers, opts.stall_s, errors, broker)
        time.sleep(1.0)  # the reader's last fetch
        sampler.stop()
        end = sampler.samples[-1]
        lag_end, lag_settle_s = _settled_lag(workers) if not stalled else (end.lag, None)
        stop.set()
        reader.join(timeout=10)
        by_worker = [w.metrics().get("answers") for w in workers]
        for w in workers:
            w.stop()
        broker_exit = None if broker is None else broker.process.poll()
        released, broker_after, by_topic = (
            _release(opts, settings, broker_pid) if broker_exit is None else ([], None, {}))
    for i in range(opts.workers):  # the stores are a cache of changelogs that went too
        shutil.rmtree(out / f"w{i}" / "data", ignore_errors=True)
    summary = summarize(
        sampler.samples, counter, n_requests, start_ms, data=str(data), scale=opts.scale,
        rows=len(ds), steps=tl.last_step + 1, workers=opts.workers, store=opts.store,
        partitions=settings.partitions, model=str(model), replay_s=round(replay_s, 1),
        replay_messages=report.messages, stalled=stalled, reader_errors=errors,
        worker_exit=[w.proc.returncode for w in workers], broker_exit=broker_exit,
        answers_by_worker=by_worker,
        topic_prefix=settings.topic_prefix,
        end_workers_rss_mb=_round(end.workers_rss_mb),
        end_broker_rss_mb=_round(end.broker_rss_mb), end_lag=lag_end,
        lag_at_last_answer=end.lag, lag_settle_s=lag_settle_s,
        topics_released=len(released), broker_rss_mb_after_release=_round(broker_after),
        broker_mb_freed_by_topic=by_topic)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(sampler.samples, out / "e2e.png", summary)
    return summary


def _requests(tl: Any, rows: int) -> tuple[Any, Any]:
    """(rows with a request in ``tl``, as a bool array over the log's ``rows``; requests
    before each timeline entry, ``len(tl) + 1`` counts)."""
    import numpy as np

    from liverank.model.data.timeline import REQUEST

    is_req = tl.kind == REQUEST
    expected = np.zeros(rows, dtype=bool)
    expected[tl.ref[is_req]] = True  # a request's ref is its row
    return expected, np.concatenate([[0], np.cumsum(is_req)])


def _release(opts: E2EOptions, settings: Settings, broker_pid: int | None
             ) -> tuple[list[str], float | None, dict[str, float | None]]:
    """Delete the run's topics unless ``opts.keep_topics``: on the embedded tansu one at a
    time, measuring what each held; on another tansu all at once; on Kafka none. Returns
    (names deleted, broker RSS after, MB freed by topic)."""
    from liverank.broker.embedded import release_run_topics

    if opts.keep_topics:
        return [], None, {}
    if broker_pid is None:
        return release_run_topics(settings), None, {}
    by_topic = _release_measured(settings, broker_pid)
    return list(by_topic), read_rss_mb(broker_pid), by_topic


def _release_measured(settings: Settings, broker_pid: int, settle_s: float = 2.0
                      ) -> dict[str, float | None]:
    """Delete the run's topics on the embedded tansu one at a time; the broker RSS freed by
    each (MB, by name without the prefix): what each topic held in its memory."""
    from liverank.broker import kafka, tansu

    admin = kafka.admin_client(settings)
    prefix = settings.topic_prefix
    names = sorted(t for t in admin.list_topics(timeout=settings.kafka_timeout_s).topics
                   if t.startswith(prefix))
    freed: dict[str, float | None] = {}
    for name in names:
        before = read_rss_mb(broker_pid)
        tansu.delete_topics(admin, [name], settings.kafka_timeout_s)
        time.sleep(settle_s)  # tansu frees a deleted topic's memory shortly after
        after = read_rss_mb(broker_pid)
        freed[name[len(prefix):]] = (None if before is None or after is None
                                     else round(before - after, 1) + 0.0)  # no -0.0
    return freed


def _wait_all_ready(workers: Sequence[Any], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Every worker ready twice in a row, half a second apart (the group has settled)."""
    deadline, streak = time.monotonic() + timeout_s, 0
    while streak < 2:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"an e2e worker exited with {w.proc.returncode}; see "
                                   f"{w.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"e2e workers not ready after {timeout_s:.0f} s; see "
                               f"{', '.join(str(w.log) for w in workers)}")
        streak = streak + 1 if all(w.ready() for w in workers) else 0
        time.sleep(0.5)


def _settled_lag(workers: Sequence[Any], wait_s: float = 30.0) -> tuple[float | None, float]:
    """The workers' summed consumer lag once it reads 0, or after ``wait_s`` (they refresh
    it every few seconds and commit on an interval, so right after the last answer it is
    stale); and the seconds waited."""
    t0 = time.monotonic()
    while True:
        lags = [m["lag"] for m in (w.metrics() for w in workers) if "lag" in m]
        lag = sum(lags) if lags else None
        waited = time.monotonic() - t0
        if lag == 0 or waited >= wait_s:
            return lag, round(waited, 1)
        time.sleep(1.0)


def _broker_gone(broker: Any) -> str:
    log = f"; its output: {broker.log_path}" if broker.log_path is not None else ""
    return (f"the embedded broker exited with code {broker.process.returncode}: "
            f"{broker.log_tail() or '(no output)'}{log}")


def _drain(counter: AnswerCounter, n: int, workers: Sequence[Any], stall_s: float,
           errors: list[str], broker: Any = None) -> bool:
    """Wait until ``n`` requests are answered; True when it stopped early (no new answer for
    ``stall_s``, a worker, the reader or the embedded ``broker`` died, or Ctrl-C)."""
    last, since = -1, time.monotonic()
    try:
        while counter.answered < n:
            if errors or any(w.proc.poll() is not None for w in workers):
                return True
            if broker is not None and not broker.alive():
                logger.error("%s; %d of %d answered", _broker_gone(broker),
                             counter.answered, n)
                return True
            if counter.answered != last:
                last, since = counter.answered, time.monotonic()
            elif time.monotonic() - since > stall_s:
                logger.error("no answer for %.0f s: %d of %d answered", stall_s,
                             counter.answered, n)
                return True
            time.sleep(0.5)
    except KeyboardInterrupt:
        typer.echo("interrupted: writing what was measured")
        return True
    return False


def summarize(samples: Sequence[Sample], counter: AnswerCounter, requests: int,
              start_ms: int, **extra: Any) -> dict[str, Any]:
    """summary.json: the wall time (replay start to the last answer's publish), answers,
    unanswered, duplicates, the fallback share, latency, peak RSS; ``extra`` as given."""
    wall_s = (counter.last_published_ms - start_ms) / 1000 if counter.answered else None
    lat = list(counter.latency_ms)
    rates = [s.answers_per_s for s in samples if s.answers_per_s is not None]
    return {
        **extra,
        "requests": requests,
        "answered": counter.answered,
        "unanswered": requests - counter.answered,
        "duplicates": counter.duplicates,
        "unexpected_answers": counter.unexpected,
        "fallback_answers": counter.fallback,
        "fallback_share": round(counter.fallback / counter.answered, 4)
        if counter.answered else None,
        "wall_s": None if wall_s is None else round(wall_s, 1),
        "answers_per_s": round(counter.answered / wall_s, 1) if wall_s else None,
        "answers_per_s_max_sample": round(max(rates), 1) if rates else None,
        "p50_ms": _round(percentile(lat, 50)),
        "p99_ms": _round(percentile(lat, 99)),
        "peak_workers_rss_mb": _round(max((s.workers_rss_mb for s in samples
                                           if s.workers_rss_mb is not None), default=None)),
        "peak_broker_rss_mb": _round(max((s.broker_rss_mb for s in samples
                                          if s.broker_rss_mb is not None), default=None)),
        "samples": len(samples),
    }


def _round(v: float | None, digits: int = 1) -> float | None:
    return None if v is None else round(v, digits)


def plot(samples: Sequence[Sample], path: Path, summary: dict[str, Any]) -> None:
    """e2e.png: answers/s, requests sent and answered, RSS, outstanding and lag, against
    elapsed minutes; the dashed line is the end of the replay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.elapsed_s / 60 for s in samples]

    def ys(attr: str) -> list[float]:
        return [float("nan") if getattr(s, attr) is None else getattr(s, attr)
                for s in samples]

    panels = [("answers/s (interval)", [("answers_per_s", "answers/s")]),
              ("requests", [("requests_sent", "sent"), ("answered", "answered")]),
              ("RSS MB", [("workers_rss_mb", "workers"), ("broker_rss_mb", "broker")]),
              ("records", [("outstanding", "requests outstanding"),
                           ("lag", "consumer lag (workers' /metrics)")])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 10), sharex=True)
    replay_end = next((s.elapsed_s / 60 for s in samples if s.phase == "drain"), None)
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for attr, label in lines:
            ax.plot(t, ys(attr), marker=".", label=label)
        if replay_end is not None:
            ax.axvline(replay_end, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("minutes since the replay started (dashed: the replay has sent all)")
    fig.suptitle(f"e2e {summary.get('scale')}: {summary['requests']:,} requests, "
                 f"{summary['workers']} worker(s); wall {summary['wall_s']} s, "
                 f"{summary['answers_per_s']} answers/s, unanswered {summary['unanswered']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_summary(s: dict[str, Any]) -> str:
    return "\n".join([
        f"e2e {s['scale']} ({s['data']}): {s['requests']:,} requests, {s['workers']} "
        f"worker(s), store {s['store']}, {s['partitions']} partitions",
        f"wall time, replay start to last answer: {s['wall_s']} s ({s['answers_per_s']} "
        f"answers/s); replay {s['replay_messages']:,} messages in {s['replay_s']} s",
        f"answered {s['answered']:,}, unanswered {s['unanswered']:,}, duplicates "
        f"{s['duplicates']}, fallback share {s['fallback_share']}",
        f"produce-to-publish (a backlog at --speed max) p50 {s['p50_ms']} ms, p99 "
        f"{s['p99_ms']} ms",
        f"at the end: workers RSS {s['end_workers_rss_mb']} MB (peak "
        f"{s['peak_workers_rss_mb']}), broker RSS {s['end_broker_rss_mb']} MB (peak "
        f"{s['peak_broker_rss_mb']}), consumer lag {s['end_lag']} (after "
        f"{s['lag_settle_s']} s; {s['lag_at_last_answer']} at the last answer)",
        *([f"the embedded broker exited with code {s['broker_exit']} before the end"]
          if s.get("broker_exit") is not None else []),
        f"topics deleted {s['topics_released']}: broker RSS after "
        f"{s['broker_rss_mb_after_release']} MB; MB freed by topic "
        f"{s['broker_mb_freed_by_topic'] or '-'}",
    ])


def bench_e2e_command(
    scale: str = typer.Option("twitch100k", help="Synthetic scale; the log is "
                              "out/data/<scale>.csv, generated if missing."),
    data: Path | None = typer.Option(None, help="A Twitch-format log instead of --scale."),
    seed: int = typer.Option(0, help="Seed when the log is generated."),
    model: Path | None = typer.Option(None, help="Exported model directory (default: a "
                                      "random model over the log's streamers)."),
    workers: int = typer.Option(1, min=1, max=16, help="Workers in one consumer group."),
    steps: int | None = typer.Option(None, min=1, help="Replay only the first N steps."),
    store: str = typer.Option("rocksdb://", help="The workers' table store."),
    sample_s: float = typer.Option(10.0, min=0.5, help="Seconds between samples."),
    stall_s: float = typer.Option(STALL_S, min=1.0, help="Give up when no answer came for "
                                  "this long."),
    out: Path = typer.Option(Path("out/e2e"), help="e2e.csv, e2e.png, summary.json, worker "
                             "logs."),
    keep_topics: bool = typer.Option(False, help="Keep the run's topics (on tansu they hold "
                                     "the broker's memory)."),
) -> None:
    """The full pipeline on a whole log: wall time from the replay's start to the last answer.

    Replays the log at max speed with a request before every watch into N workers of one
    group; an independent reader counts the answers (unanswered must be 0). Samples
    answers/s, RSS and lag to OUT/e2e.csv, draws OUT/e2e.png, writes OUT/summary.json.
    Exits 1 when a request was left unanswered.
    """
    if data is not None and not data.exists():
        typer.echo(f"error: --data {data}: no such file", err=True)
        raise typer.Exit(2)
    if data is None and scale not in _scales():
        typer.echo(f"error: --scale must be one of {', '.join(_scales())}, got {scale!r}",
                   err=True)
        raise typer.Exit(2)
    from liverank.model.data.twitch import DataError

    try:
        summary = run_e2e(E2EOptions(scale=scale, data=data, seed=seed, model=model,
                                     workers=workers, steps=steps, store=store,
                                     sample_s=sample_s, stall_s=stall_s, out=out,
                                     keep_topics=keep_topics))
    except DataError as exc:  # a malformed --data file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(format_summary(summary))
    typer.echo(f"wrote {out / 'e2e.csv'}, {out / 'e2e.png'}, {out / 'summary.json'}")
    if summary["unanswered"]:
        raise typer.Exit(1)


def _scales() -> list[str]:
    from liverank.model.data.synth import SCALES

    return list(SCALES)
