"""LiveRec's time split: train before ``pivot_1``, validation ``[pivot_1, pivot_2)``, test
``[pivot_2, max_step]``, with ``pivot_1 = max_step - 500`` and ``pivot_2 = max_step - 250``
by default (a row belongs to the part its ``start`` falls in)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .twitch import Interactions

VAL_OFFSET = 500
TEST_OFFSET = 250


@dataclass(frozen=True)
class TimeSplit:
    pivot_1: int  # first validation step
    pivot_2: int  # first test step
    max_step: int

    def part(self, step: np.ndarray) -> np.ndarray:
        """0 = train, 1 = validation, 2 = test, per step."""
        step = np.asarray(step)
        return (step >= self.pivot_1).astype(np.int8) + (step >= self.pivot_2).astype(np.int8)

    def train(self, ds: Interactions) -> np.ndarray:
        return ds.start < self.pivot_1

    def validation(self, ds: Interactions) -> np.ndarray:
        return (ds.start >= self.pivot_1) & (ds.start < self.pivot_2)

    def test(self, ds: Interactions) -> np.ndarray:
        return ds.start >= self.pivot_2


def time_split(ds: Interactions, val_offset: int = VAL_OFFSET,
               test_offset: int = TEST_OFFSET) -> TimeSplit:
    if not 0 <= test_offset <= val_offset:
        raise ValueError(
            f"split offsets must satisfy 0 <= test_offset ({test_offset}) "
            f"<= val_offset ({val_offset})"
        )
    max_step = ds.max_step
    return TimeSplit(max(max_step - val_offset, 0), max(max_step - test_offset, 0), max_step)
