"""The pure parts of ``liverank bench soak``: parsing, rows, pacing, looping, the verdict."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pandas as pd
import pytest

from liverank.cli.bench_soak import (
    CSV_FIELDS,
    Sample,
    at_fraction,
    cpu_pct,
    csv_row,
    dir_mb,
    first_days,
    fit_saturation,
    levels_off,
    loop_frame,
    loop_period,
    paced,
    parse_cpu_ticks,
    parse_metrics,
    parse_vmrss_mb,
    passes_needed,
    percentile,
    read_samples,
    second_half_slope,
    slope_per_min,
    speed_for,
    steady_slope,
    summarize,
    verdict,
)
from liverank.core.timebase import STEPS_PER_DAY

STATUS = """Name:\tpython
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t 1234567 kB
VmRSS:\t  524288 kB
RssAnon:\t  400000 kB
Threads:\t12
"""

METRICS = """# HELP liverank_answers_total Recommendations published, by trigger.
# TYPE liverank_answers_total counter
liverank_answers_total{trigger="request"} 1234.0
liverank_answers_total{trigger="watch"} 99.0
# HELP liverank_answers_created Recommendations published, by trigger.
liverank_answers_created{trigger="request"} 1.7e+09
liverank_consumer_lag{partition="0"} 10.0
liverank_consumer_lag{partition="3"} 5.0
liverank_stream_intervals 812.0
liverank_live_streams 640.0
liverank_windows_created 2000.0
liverank_stream_watermark_step 3071.0
"""


def test_vmrss_is_read_in_megabytes_and_missing_is_none():
    assert parse_vmrss_mb(STATUS) == 512.0
    assert parse_vmrss_mb("Name:\tkthreadd\nState:\tS\n") is None
    assert parse_vmrss_mb("VmRSS:\t2 mB\n") == 2.0


def test_cpu_ticks_are_utime_plus_stime_even_with_odd_command_names():
    stat = ("4242 (liverank (serve) x) S 1 4242 4242 0 -1 4194560 5000 0 0 0 "
            "1500 250 0 0 20 0 12 0 100 900000000 131072 18446744073709551615")
    assert parse_cpu_ticks(stat) == 1750
    assert parse_cpu_ticks("1 (init) S") is None
    assert cpu_pct(10.0, 12.5, 5.0) == pytest.approx(50.0)
    assert cpu_pct(None, 1.0, 5.0) is None and cpu_pct(1.0, 2.0, 0) is None


def test_metrics_pick_request_answers_and_sum_lag_over_partitions():
    m = parse_metrics(METRICS)
    assert m == {"answers": 1234.0, "lag": 15.0, "stream_intervals": 812.0,
                 "live_streams": 640.0, "windows": 2000.0}


def test_metrics_without_partitions_read_lag_zero_and_garbage_is_skipped():
    m = parse_metrics('liverank_answers_total{trigger="request"} 3\nnot a metric line\n\n')
    assert m == {"answers": 3.0, "lag": 0.0}
    assert parse_metrics("") == {}


def test_csv_rows_have_every_field_with_empty_cells_for_unknown_values():
    s = Sample(elapsed_s=5.0123, phase="soak", worker_rss_mb=512.25, lag=None, latency_n=7,
               requests_sent=100)
    row = csv_row(s)
    assert tuple(row) == CSV_FIELDS
    assert row["elapsed_s"] == "5.012" and row["worker_rss_mb"] == "512.250"
    assert row["lag"] == "" and row["latency_n"] == "7" and row["phase"] == "soak"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerow(row)
    back = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert back[0]["requests_sent"] == "100"


def test_speed_sends_the_rate_on_average():
    # 100 requests per 10-minute step at 800 requests/s: 8 steps/s = 4800 simulated s/s.
    assert speed_for(800, 100) == pytest.approx(4800)
    with pytest.raises(ValueError):
        speed_for(0, 100)
    with pytest.raises(ValueError):
        speed_for(10, 0)


def test_passes_cover_the_soak_with_a_margin_and_are_bounded():
    assert passes_needed(600, 800, 610_000) == 1  # 480k requests (600k with the margin)
    assert passes_needed(600, 1000, 610_000) == 2
    assert passes_needed(120, 1000, 61_000) == 3  # 150k / 61k
    assert passes_needed(1e9, 1e6, 1) == 50
    with pytest.raises(ValueError):
        passes_needed(60, 10, 0)


def test_loop_period_is_whole_days():
    assert loop_period(6147) == 43 * STEPS_PER_DAY
    assert loop_period(STEPS_PER_DAY - 1) == STEPS_PER_DAY
    assert loop_period(STEPS_PER_DAY) == 2 * STEPS_PER_DAY


def test_looped_frame_shifts_steps_and_streams_and_keeps_users():
    frame = pd.DataFrame({"user": [1, 2, 1], "stream": [10, 11, 10],
                          "streamer": ["a", "b", "a"], "start": [0, 3, 5],
                          "stop": [2, 6, 7]})
    looped = loop_frame(frame, 3, 144)
    assert len(looped) == 9
    assert looped["start"].tolist() == [0, 3, 5, 144, 147, 149, 288, 291, 293]
    assert looped["stop"].tolist()[3:6] == [146, 150, 151]
    assert looped["stream"].tolist() == [10, 11, 10, 22, 23, 22, 34, 35, 34]
    assert looped["user"].tolist() == [1, 2, 1] * 3
    assert looped["streamer"].tolist() == ["a", "b", "a"] * 3
    # a stream id names one broadcast: no id is shared between passes
    per_pass = [set(looped["stream"][i * 3:(i + 1) * 3]) for i in range(3)]
    assert not (per_pass[0] & per_pass[1]) and not (per_pass[1] & per_pass[2])
    assert loop_frame(frame, 1, 144) is frame


def test_paced_feed_loops_the_log_and_counts_requests_per_event(tmp_path):
    from liverank.model.data.synth import write
    from liverank.model.data.timeline import REQUEST
    from liverank.model.data.twitch import load_interactions

    csv_path = tmp_path / "tiny.csv"
    write("tiny", 0, csv_path)
    ds = load_interactions(csv_path)
    once = paced(ds, csv_path, rate=50, seconds=10, epoch_ms=0)
    assert once.passes == 1 and once.period == loop_period(ds.max_step)
    assert once.speed == pytest.approx(speed_for(50, len(ds) / once.period))
    kinds = once.timeline.kind
    assert once.requests_before[-1] == np.count_nonzero(kinds == REQUEST) == len(ds)
    assert np.all(np.diff(once.requests_before) == (kinds == REQUEST))
    looped = paced(ds, csv_path, rate=10 * len(ds), seconds=1, epoch_ms=0)
    assert looped.passes == passes_needed(1, 10 * len(ds), len(ds)) > 1
    assert looped.requests_before[-1] == looped.passes * len(ds)


def test_the_soak_loops_the_logs_first_days_so_a_pass_ends_early(tmp_path):
    from liverank.model.data.synth import write
    from liverank.model.data.twitch import load_interactions

    csv_path = tmp_path / "tiny.csv"
    write("tiny", 0, csv_path)
    ds = load_interactions(csv_path)
    days = ds.max_step // STEPS_PER_DAY + 1
    assert days >= 3
    per_day = np.bincount(np.asarray(ds.start) // STEPS_PER_DAY)
    seconds, rate = 60.0, float(per_day[:2].sum()) / 20  # two days = a third of the soak
    feed = paced(ds, csv_path, rate=rate, seconds=seconds, epoch_ms=0, pass_share=1 / 3)
    assert feed.pass_end_step < 2 * STEPS_PER_DAY  # the first two days only
    assert feed.period == 2 * STEPS_PER_DAY
    assert feed.requests_before[-1] == feed.passes * per_day[:2].sum()
    assert feed.passes >= 3
    cut = first_days(ds, csv_path, per_day[:2].sum())
    assert len(cut) == per_day[:2].sum() and cut.max_step < 2 * STEPS_PER_DAY
    assert first_days(ds, csv_path, 1).max_step < STEPS_PER_DAY  # at least a day
    assert first_days(ds, csv_path, len(ds)) is ds  # all of it fits
    whole = paced(ds, csv_path, rate=50, seconds=10, epoch_ms=0)
    assert whole.pass_end_step == ds.max_step


def test_slope_is_per_minute_and_nan_without_spread():
    t = [0, 60, 120, 180]
    assert slope_per_min(t, [100, 102, 104, 106]) == pytest.approx(2.0)
    assert slope_per_min(t, [5, 5, 5, 5]) == 0.0
    assert math.isnan(slope_per_min([1], [1]))
    assert math.isnan(slope_per_min([3, 3], [1, 2]))


def _samples(rss: list[float], every: float = 30.0, drain: int = 0) -> list[Sample]:
    out = [Sample(elapsed_s=every * (i + 1), phase="soak", worker_rss_mb=v, lag=float(i),
                  stream_intervals=1000.0 - i, live_streams=500.0, p99_ms=10.0 + i,
                  requests_sent=100 * (i + 1), answers_total=97.0 * (i + 1),
                  worker_cpu_pct=50.0 + i)
           for i, v in enumerate(rss)]
    out += [Sample(elapsed_s=every * (len(rss) + i + 1), phase="drain", worker_rss_mb=9999.0,
                   lag=0.0) for i in range(drain)]
    return out


def test_rss_that_grows_then_flattens_levels_off():
    rss = [200, 260, 300, 320, 330, 331, 331.5, 332, 332, 332.4]  # every 30 s
    s = _samples(rss, drain=2)
    slope = second_half_slope(s)  # soak samples at >= 150 s; drain samples ignored
    assert 0 < slope < 2.0
    assert verdict(slope)
    assert at_fraction(s, 0.5, "worker_rss_mb") == 330  # 150 s
    assert at_fraction(s, 1.0, "worker_rss_mb") == 332.4  # the last soak sample, not drain


def test_rss_that_keeps_growing_does_not_level_off():
    rss = [200 + 5 * i for i in range(10)]  # 5 MB every 30 s: 10 MB/min
    slope = second_half_slope(_samples(rss))
    assert slope == pytest.approx(10.0)
    assert not verdict(slope)
    assert not verdict(float("nan"))
    assert verdict(9.0, threshold=10.0)


def _looped(rss: list[float], first_pass_end: int) -> list[Sample]:
    s = _samples(rss)
    for i, x in enumerate(s):  # 100 steps per sample
        x.replay_step = 100 * (i + 1)
    assert first_pass_end < s[-1].replay_step
    return s


def test_steady_slope_is_taken_after_the_logs_first_pass():
    # New users until the first pass ends (step 700, the 7th sample), then flat: the second
    # half still holds the growth, the window after the first pass does not.
    rss = [200, 230, 260, 290, 320, 350, 380, 381, 381, 381.5, 381.5, 382]
    s = _looped(rss, 700)
    assert second_half_slope(s) > 2.0
    slope, start, window = steady_slope(s, 700)
    assert window == "after the log's first pass" and start == 240.0  # step 800
    assert 0 < slope < 2.0 and verdict(slope)
    summary = summarize(s, [], first_pass_end_step=700)
    assert summary["memory_levels_off"] is True
    assert summary["worker_rss_slope_second_half_mb_per_min"] > 2.0


def test_state_that_grows_after_the_first_pass_does_not_level_off():
    rss = [200 + 10 * i for i in range(12)]  # 10 MB every 30 s, users or not
    s = _looped(rss, 500)
    slope, _, window = steady_slope(s, 500)
    assert window == "after the log's first pass" and slope == pytest.approx(20.0)
    assert summarize(s, [], first_pass_end_step=500)["memory_levels_off"] is False


def test_a_first_pass_ending_late_falls_back_to_the_second_half():
    rss = [200, 240, 280, 320, 360, 361, 361, 361.5, 361.5, 362, 362, 362]
    s = _looped(rss, 1100)  # only the last sample is past it: under a quarter of the soak
    slope, start, window = steady_slope(s, 1100)
    assert window == "second half" and start == 180.0
    assert slope == pytest.approx(second_half_slope(s))
    assert steady_slope(s, None)[2] == "second half"  # one pass: no steady window


def test_a_fill_to_a_bound_saturates_and_a_leak_does_not():
    t = [190.0 + 5 * i for i in range(83)]  # the steady window of a 10-minute soak
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 2.0, len(t))
    fill = [320 - 80 * math.exp(-(x - 190) / 150) + e for x, e in zip(t, noise, strict=True)]
    fit = fit_saturation(t, fill)
    assert fit is not None and fit.saturates()
    assert fit.asymptote == pytest.approx(320, abs=6) and fit.rmse < fit.linear_rmse
    slope = slope_per_min(t, fill)
    assert not verdict(slope)  # a straight line calls it rising ...
    assert levels_off(slope, fit)  # ... the saturating fit sees it level off
    leak = [240 + 10 * (x - 190) / 60 + e for x, e in zip(t, noise, strict=True)]  # 10 MB/min
    fit = fit_saturation(t, leak)
    assert fit is not None and not fit.saturates()
    assert not levels_off(slope_per_min(t, leak), fit)
    slow = [240 + 40 * (1 - math.exp(-(x - 190) / 3000)) for x in t]  # tau far past the run
    fit = fit_saturation(t, slow)
    assert fit is not None and not fit.saturates()
    flat = [300 + e for e in noise]
    assert levels_off(slope_per_min(t, flat), fit_saturation(t, flat))
    assert fit_saturation(t[:3], flat[:3]) is None


def test_soak_csv_reads_back_into_the_same_samples(tmp_path):
    samples = _samples([200.0, 210.5, 211.0], drain=1)
    samples[0].replay_step = 7
    path = tmp_path / "soak.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(csv_row(s) for s in samples)
    back = read_samples(path)
    assert back == samples
    assert summarize(back, [])["memory_levels_off"] == summarize(samples, [])["memory_levels_off"]


def test_percentile_matches_numpy():
    values = [float(v) for v in np.random.default_rng(0).exponential(10, 1001)]
    for q in (50, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 99) is None


def test_summary_reports_quartiles_slope_lag_latency_and_live_index():
    rss = [200, 260, 300, 320, 330, 331, 331.5, 332, 332, 332.4]
    s = _samples(rss, drain=1)
    summary = summarize(s, [1.0, 2.0, 3.0, 100.0], scale="tiny")
    assert summary["scale"] == "tiny"
    assert summary["samples"] == 11
    assert summary["soak_s"] == 300
    # 25% of 300 s is 75 s, halfway between the samples at 60 and 90 s: the earlier one
    assert summary["worker_rss_mb"] == {"25%": 260, "50%": 330, "75%": 331.5, "100%": 332.4}
    assert summary["max_lag"] == 9.0
    assert summary["stream_intervals_end"] == 991.0
    assert summary["stream_intervals_max"] == 1000.0
    assert summary["p50_ms"] == 2.5
    assert summary["max_interval_p99_ms"] == 19.0
    assert summary["memory_levels_off"] is True
    assert summary["broker_rss_mb"]["50%"] is None
    assert summary["sent_requests_per_s"] == 3.3  # 1000 requests in 300 s
    assert summary["answered_per_s"] == 3.2
    assert summary["kept_up"] is True  # 97% answered while sending
    assert summary["mean_cpu_pct"]["worker"] == 54.5
    assert summary["stream_intervals_after_drain"] is None  # the drain sample has none
    assert summary["worker_rss_mb_after_drain"] == 9999.0


def test_a_worker_that_falls_behind_did_not_keep_up():
    s = _samples([100.0] * 4)
    for x in s:
        x.answers_total = x.requests_sent * 0.5
    assert summarize(s, [])["kept_up"] is False
    assert summarize([], [])["kept_up"] is None


def test_state_size_on_disk(tmp_path):
    assert dir_mb(tmp_path / "absent") is None and dir_mb(None) is None
    (tmp_path / "p0").mkdir()
    (tmp_path / "p0" / "000001.sst").write_bytes(b"x" * 2**20)
    (tmp_path / "LOCK").write_bytes(b"x" * 2**19)
    assert dir_mb(tmp_path) == 1.5
