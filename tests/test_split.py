from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from liverank.model.data.split import time_split
from liverank.model.data.twitch import from_frame


def frame(starts: list[int]) -> pd.DataFrame:
    n = len(starts)
    return pd.DataFrame({"user": np.arange(n) % 3 + 1, "stream": np.arange(n) + 100,
                         "streamer": [f"s{i % 4}" for i in range(n)], "start": starts,
                         "stop": [s + 2 for s in starts]})


def test_default_pivots_and_boundaries() -> None:
    ds = from_frame(frame([0, 4000, 5000, 5647, 5648, 5897, 5898, 6146]))
    sp = time_split(ds)
    assert ds.max_step == 6148
    assert (sp.pivot_1, sp.pivot_2) == (5648, 5898)
    assert sp.train(ds).tolist() == [True, True, True, True, False, False, False, False]
    assert sp.validation(ds).tolist() == [False] * 4 + [True, True, False, False]
    assert sp.test(ds).tolist() == [False] * 6 + [True, True]
    assert sp.part(np.array([5647, 5648, 5897, 5898])).tolist() == [0, 1, 1, 2]


def test_offsets_are_configurable_and_checked() -> None:
    ds = from_frame(frame([0, 100, 200]))
    sp = time_split(ds, val_offset=50, test_offset=20)
    assert (sp.pivot_1, sp.pivot_2) == (152, 182)
    with pytest.raises(ValueError, match="test_offset"):
        time_split(ds, val_offset=10, test_offset=20)
