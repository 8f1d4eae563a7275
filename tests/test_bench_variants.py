"""The pure parts of ``liverank bench variants``."""

from __future__ import annotations

import os

import pytest

from liverank.cli.bench_variants import Variant, cpu_seconds, parse_variant


def test_a_variant_is_a_name_and_liverank_settings() -> None:
    assert parse_variant("push:LIVERANK_PUSH_ON_LIVE=true") == Variant(
        "push", {"LIVERANK_PUSH_ON_LIVE": "true"})
    assert parse_variant("both:LIVERANK_A=1,LIVERANK_B=x=y") == Variant(
        "both", {"LIVERANK_A": "1", "LIVERANK_B": "x=y"})
    assert parse_variant("plain:") == Variant("plain", {})
    for bad in ("push", ":LIVERANK_A=1", "x:PUSH=1", "x:LIVERANK_A"):
        with pytest.raises(ValueError, match="--variant"):
            parse_variant(bad)


def test_cpu_seconds_of_this_process_grow_with_work() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds(os.getpid()) > before
