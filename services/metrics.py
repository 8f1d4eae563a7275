"""The service's Prometheus metrics, registered in the same registry as Faust's own.

`liverank.services.app` passes one `CollectorRegistry` to Faust's
``setup_prometheus_sensors`` (events, commit latency, rebalances, table sizes) and to
`Metrics`, so ``/metrics`` serves both. A registry per service instance keeps tests that
build several apps in one process apart. This module imports neither faust nor torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from liverank.core import events as ev

# Produce-to-publish latency: a few ms when keeping up, seconds when a backlog builds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    """Every counter, gauge and histogram of the service, named ``liverank_*``."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        r = registry
        self.events_in = Counter("liverank_events_in", "Events read, by topic and kind.",
                                 ["topic", "kind"], registry=r)
        self.answers = Counter("liverank_answers", "Recommendations published, by trigger.",
                               ["trigger"], registry=r)
        self.late = Counter("liverank_late_requests", "Requests answered before every "
                            "stream-events partition reached their step.", registry=r)
        self.stale = Counter("liverank_stale_requests", "Answers marked stale: their step "
                             "is behind what the live index still holds.", registry=r)
        self.fallback = Counter("liverank_fallback_answers", "Answers for an empty window.",
                                registry=r)
        self.dead_letters = Counter("liverank_dead_letters", "Records sent to dead-letters, "
                                    "by source topic and reason.", ["topic", "reason"],
                                    registry=r)
        self.duplicates = Counter("liverank_duplicate_watches", "Watches already in the "
                                  "window (redelivered), not applied again.", registry=r)
        self.watch_not_live = Counter("liverank_watch_not_live", "Watches of a stream that "
                                      "was not live at their step (window still updated).",
                                      registry=r)
        self.batch_size = Histogram("liverank_batch_size", "User events per micro-batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.requests_per_batch = Histogram("liverank_batch_requests", "Answers scored per "
                                            "micro-batch.", buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram("liverank_produce_to_publish_seconds", "From the request's "
                                 "produced_ms header to publishing its answer.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.scoring = Histogram("liverank_scoring_seconds", "Scorer time per micro-batch.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.model_runs = Counter("liverank_model_runs", "Model runs (one per scored batch) "
                                  "by where they ran: the event loop when no input was "
                                  "waiting, else the scoring thread.", ["on"], registry=r)
        self.backlog_batches = Counter("liverank_backlog_batches", "Micro-batches prepared "
                                       "in a backlog, under the backlog GC threshold "
                                       "(gc_backlog_threshold).", registry=r)
        self.watermark_wait = Histogram("liverank_watermark_wait_seconds", "Time a batch "
                                        "waited for stream watermarks.",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.live_streams = Gauge("liverank_live_streams", "Streams live at the watermark.",
                                  registry=r)
        self.intervals = Gauge("liverank_stream_intervals", "Broadcast intervals held "
                               "(live or stopped within the horizon).", registry=r)
        self.watermark = Gauge("liverank_stream_watermark_step", "Step every stream-events "
                               "partition has reached.", registry=r)
        self.windows = Gauge("liverank_windows_created", "User windows created by this "
                             "worker since it started.", registry=r)
        self.windows_written = Counter("liverank_window_writes", "Window (changelog) writes: "
                                       "one per user per micro-batch.", registry=r)
        self.ready = Gauge("liverank_ready", "1 when recovered and serving.", registry=r)
        self.model = Gauge("liverank_model_info", "The model version being served (value 1).",
                           ["version"], registry=r)
        self.model_swaps = Counter("liverank_model_swaps", "Model versions switched in.",
                                   registry=r)
        self.model_swap_failures = Counter("liverank_model_swap_failures", "New model "
                                           "directories refused (hash or load error).",
                                           registry=r)
        self.lag = Gauge("liverank_consumer_lag", "Records of an owned user-events "
                         "partition not yet committed by the group (high watermark - committed"
                         " offset; on tansu the watermark, and so this, can read low).",
                         ["partition"], registry=r)
        self.since_progress = Gauge("liverank_seconds_since_progress", "Seconds since the "
                                    "last micro-batch was delivered and acked.", registry=r)
        self.broker_up = Gauge("liverank_broker_up", "1 while the worker's own broker calls "
                               "succeed, 0 during an outage.", registry=r)
        self.live = Gauge("liverank_live", "1 unless the worker is wedged (liveness).",
                          registry=r)
        self.shadow_answers = Counter("liverank_shadow_answers", "Answers of the shadow "
                                      "(candidate) model published to "
                                      "recommendations-shadow.", registry=r)
        self.users_on_page = Gauge("liverank_users_on_page", "Users of this worker's "
                                   "partitions within push_on_page_steps of their last event "
                                   "(who a stream start may push to).", registry=r)
        self.publish_failures = Counter("liverank_publish_failures", "Messages the broker "
                                        "did not acknowledge.", registry=r)

    def count_answers(self, recs: Sequence[ev.Recommendation]) -> None:
        """Count a batch's delivered answers: by trigger, late, fallback, stale, and each
        one's produce-to-publish latency. One ``inc()`` per counter per batch (the
        per-answer calls were measurable on the hot path)."""
        counts = [0, 0, 0, 0, 0, 0]  # request, watch, late, fallback, stale, live_change
        observe = self.latency.observe
        for rec in recs:
            counts[5 if rec.trigger == "live_change" else rec.trigger == "watch"] += 1
            if rec.produced_ms is not None:
                observe(max(0, rec.published_ms - rec.produced_ms) / 1000)
            counts[2] += rec.late
            counts[3] += rec.fallback
            counts[4] += rec.stale
        for metric, n in zip((self.answers.labels("request"), self.answers.labels("watch"),
                              self.late, self.fallback, self.stale,
                              self.answers.labels("live_change")), counts, strict=True):
            if n:
                metric.inc(n)

    def set_model(self, version: str) -> None:
        self.model.clear()
        self.model.labels(version=version).set(1)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)
