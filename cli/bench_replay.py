"""``liverank bench replay``: the whole replay command against a raw confluent-kafka loop.

    liverank bench replay                       # out/data/twitch100k.csv, generated if missing

Both runs send the same messages (same topics, keys, partitions, timestamps, header, values)
with the same producer config into their own fresh embedded tansu:

* **raw**: the messages encoded beforehand (not timed), then a bare loop of ``produce`` +
  ``poll(0)`` with a counting delivery callback, ``BufferError`` retry and ``flush``;
* **replay**: the ``liverank replay DATA --speed max`` command in a subprocess, timed from
  launch to exit: imports, CSV loading, timeline, encoding, producing and flushing.

The figure is messages/s (a watermark counts once per partition) and replay/raw.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path("out/data/twitch100k.csv")
TARGET_RATIO = 0.8


def bench_replay(
    data: Path = typer.Option(DEFAULT_DATA, help="Twitch-format log to replay; generated "
                              "with the synthetic twitch100k scale when it is missing."),
    partitions: int = typer.Option(8, help="Partitions of every topic."),
    repeat: int = typer.Option(1, min=1, help="Runs of each, alternating which goes first; "
                               "the medians are compared (the machine is shared: use 3)."),
    out: Path = typer.Option(Path("out/bench/replay.json"), help="Where to write the figures."),
) -> None:
    """Events/s of `liverank replay --speed max` into tansu vs a raw confluent-kafka loop.

    Each run gets a fresh embedded tansu; the raw loop produces the same messages already
    encoded, with the same producer settings. Prints both rates and their ratio (target
    >= 0.8) and writes them as JSON.
    """
    if not data.exists():
        if data != DEFAULT_DATA:
            typer.echo(f"error: {data}: no such file", err=True)
            raise typer.Exit(2)
        _generate(data)
    events, msgs = _encode_all(data, partitions)
    raw_s: list[float] = []
    rep_s: list[float] = []
    for r in range(repeat):
        order = ("raw", "replay") if r % 2 == 0 else ("replay", "raw")
        for which in order:
            if which == "raw":
                raw_s.append(_raw_run(msgs, partitions))
            else:
                sent, seconds = _replay_run(data, partitions)
                if sent != len(msgs):
                    logger.warning("replay sent %d messages, raw %d", sent, len(msgs))
                rep_s.append(seconds)
            logger.info("run %d %s: %.1f s", r + 1, which, (raw_s if which == "raw"
                                                             else rep_s)[-1])
    raw_t, rep_t = statistics.median(raw_s), statistics.median(rep_s)
    result = {
        "bench": "replay", "data": str(data), "partitions": partitions, "repeat": repeat,
        "command": f"liverank replay {data} --speed max --no-progress",
        "events": events, "messages": len(msgs),
        "raw_seconds": raw_s, "replay_seconds": rep_s,
        "raw_msgs_per_s": len(msgs) / raw_t, "replay_msgs_per_s": len(msgs) / rep_t,
        "replay_events_per_s": events / rep_t, "ratio": raw_t / rep_t,
        "target_ratio": TARGET_RATIO,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    runs = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    typer.echo(
        f"replay bench on {data} ({events:,} timeline events, {len(msgs):,} messages, "
        f"{partitions} partitions, tansu; median of {repeat})\n"
        f"  raw confluent-kafka loop (pre-encoded): {result['raw_msgs_per_s']:>10,.0f} msg/s "
        f"(runs: {runs(raw_s)} s)\n"
        f"  liverank replay --speed max (whole):    {result['replay_msgs_per_s']:>10,.0f} msg/s "
        f"(runs: {runs(rep_s)} s; {result['replay_events_per_s']:,.0f} timeline events/s)\n"
        f"  ratio replay/raw: {result['ratio']:.2f} (target >= {TARGET_RATIO}) -> {out}")


def _generate(path: Path) -> None:
    from liverank.model.data.synth import write

    logger.info("generating %s (synthetic twitch100k scale, seed 0)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write("twitch100k", 0, str(path))


def _settings(bootstrap: str, prefix: str, partitions: int) -> Any:
    from liverank.core.settings import Settings

    return Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix, partitions=partitions,
                    broker_kind="tansu")


def _encode_all(data: Path, partitions: int) -> tuple[int, list[tuple[Any, ...]]]:
    """Every message of the replay, encoded: (topic, value, key, partition, timestamp)."""
    from liverank.broker import kafka as kf
    from liverank.model.data.timeline import build_timeline
    from liverank.model.data.twitch import load_interactions
    from liverank.replay.encoder import Encoder
    from liverank.replay.producer import end_records

    tl = build_timeline(load_interactions(data))
    s = _settings("unused:9092", "raw.", partitions)
    b = Encoder(tl, partitions, s.topic(kf.STREAM_EVENTS), s.topic(kf.USER_EVENTS)).encode(
        0, len(tl))
    msgs = list(zip(b.topic, b.value, b.key, b.partition, b.timestamp, strict=True))
    n_user = int(b.user.sum())
    msgs += [(s.topic(kf.STREAM_EVENTS), value, None, p, ts) for p, ts, value in
             end_records(tl, partitions, len(msgs) - n_user, n_user)]
    gc.collect()
    gc.freeze()  # millions of long-lived objects: keep them out of the collector's scans
    return len(tl), msgs


def _raw_run(msgs: list[tuple[Any, ...]], partitions: int) -> float:
    from confluent_kafka import Producer

    from liverank.broker import kafka as kf
    from liverank.broker.embedded import EmbeddedBroker
    from liverank.core.events import PRODUCED_MS_HEADER
    from liverank.replay.producer import _produce_when_room

    with EmbeddedBroker.start() as broker:
        s = _settings(broker.bootstrap, "raw.", partitions)
        kf.ensure_topics(s)
        header: list[tuple[str, str | bytes | None]] = [
            (PRODUCED_MS_HEADER, b"%d" % (time.time_ns() // 1_000_000))]
        acked, failed = [0], [0]

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                acked[0] += 1
            else:
                failed[0] += 1

        producer = Producer(kf.producer_config(s))
        produce, poll = producer.produce, producer.poll
        logger.info("raw loop: %d messages", len(msgs))
        t0 = time.perf_counter()
        for topic, value, key, part, ts in msgs:
            try:
                produce(topic, value, key, part, on_delivery=on_delivery, timestamp=ts,
                        headers=header)
            except BufferError:
                _produce_when_room(producer, topic, value, key, part, on_delivery, ts, header)
            poll(0)
        left = producer.flush(120)
        seconds = time.perf_counter() - t0
    if left or failed[0] or acked[0] != len(msgs):
        raise RuntimeError(f"raw loop lost messages: acked {acked[0]} of {len(msgs)}")
    return seconds


def _replay_run(data: Path, partitions: int) -> tuple[int, float]:
    from liverank.broker.embedded import EmbeddedBroker

    env = {**os.environ, "LIVERANK_PARTITIONS": str(partitions), "LIVERANK_BROKER_KIND": "tansu"}
    exe = Path(sys.executable).with_name("liverank")
    with EmbeddedBroker.start() as broker, tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [str(exe), "replay", str(data), "--speed", "max", "--no-progress",
               "--bootstrap", broker.bootstrap, "--topic-prefix", "replay.",
               "--report", str(report)]
        logger.info("timing: %s", " ".join(cmd))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"replay failed ({proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads(report.read_text())
    if not summary["ok"]:
        raise RuntimeError(f"replay reported a failure: {summary}")
    return int(summary["messages"]), seconds
