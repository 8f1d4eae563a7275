"""Model features (numpy, shared with serving): tie-break, masking, repeat features."""

from __future__ import annotations

import numpy as np
import pytest

from liverank.model.features import (
    ROW_BLOCKS,
    CandidateSet,
    ItemIndex,
    TimeEncoding,
    candidate_set,
    query_steps,
    rank_of,
    repeat_buckets,
    repeat_features_last,
    repeat_features_positions,
    time_features,
    top_k,
    top_k_rows,
    window_arrays,
)

ENC = TimeEncoding()


def _index(names: list[str]) -> ItemIndex:
    return ItemIndex(tuple(names), np.arange(len(names), 0, -1, dtype=np.int64))


def test_top_k_breaks_ties_by_column_order_even_at_the_cut() -> None:
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0], dtype=np.float32)
    assert top_k(scores, 1).tolist() == [1]
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 4, 0]
    assert top_k(scores, 0).tolist() == []


def test_top_k_rows_equals_top_k_of_every_row_ties_included() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        b, c = int(rng.integers(1, 12)), int(rng.integers(1, 40))
        # few distinct values: ties at the cut are common; sometimes all distinct
        high = int(rng.choice([3, 10, 10_000]))
        scores = rng.integers(0, high, size=(b, c)).astype(np.float32)
        k = int(rng.integers(1, 15))
        got = top_k_rows(scores, k)
        assert got.shape == (b, min(k, c))
        for row in range(b):
            assert got[row].tolist() == top_k(scores[row], k).tolist()
    assert top_k_rows(np.zeros((3, 0), dtype=np.float32), 5).shape == (3, 0)
    assert top_k_rows(np.zeros((0, 4), dtype=np.float32), 5).shape == (0, 4)


def test_top_k_rows_of_wide_rows_equals_top_k_through_the_block_floor() -> None:
    """Rows wide enough for the strided-block floor (C // ROW_BLOCKS >= k), with a ragged
    tail of columns, ties at the cut, equal rows and rows whose best sit in one block."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        b = int(rng.integers(1, 30))
        k = int(rng.integers(1, 25))
        c = int(rng.integers(k * ROW_BLOCKS, k * ROW_BLOCKS + 400))
        high = int(rng.choice([1, 3, 50, 1_000_000]))
        scores = rng.integers(0, high, size=(b, c)).astype(np.float32)
        if rng.random() < 0.3:  # the best all in block 0 (columns 0, n, 2n, ...)
            n = c // ROW_BLOCKS
            scores[:, ::n] += high
        got = top_k_rows(scores, k)
        assert got.shape == (b, k)
        for row in range(b):
            assert got[row].tolist() == top_k(scores[row], k).tolist()


def test_top_k_rows_refuses_nan_rows() -> None:
    scores = np.zeros((2, 200), dtype=np.float32)
    scores[1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        top_k_rows(scores, 5)


def test_rank_of_matches_the_full_top_k_order() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        scores = rng.integers(0, 4, size=int(rng.integers(1, 30))).astype(np.float32)
        order = top_k(scores, scores.shape[0]).tolist()
        for col in range(scores.shape[0]):
            assert rank_of(scores, col) == order.index(col) + 1


def test_candidate_set_orders_by_model_index_then_name_and_dedupes() -> None:
    index = _index(["pop", "mid", "low"])
    cset = candidate_set(["zed", "low", "pop", "abe", "pop"], index)
    # known items by index (pop=1, low=3), then unknown (OOV=4) by name
    assert cset.names == ("pop", "low", "abe", "zed")
    assert cset.items.tolist() == [1, 3, 4, 4]
    assert cset.cols["abe"] == 2


def test_candidate_set_matches_its_definition_on_random_names() -> None:
    """The numpy ordering against the definition: sorted by (model id, name), deduplicated,
    with known, unknown, repeated and empty candidate lists."""
    rng = np.random.default_rng(11)
    vocab = [f"s{i:03d}" for i in range(60)]
    index = _index(vocab[:40])  # s040..s059 are unknown to the model
    for _ in range(300):
        names = [vocab[i] for i in rng.integers(0, 60, size=int(rng.integers(0, 50)))]
        expected = sorted(set(names), key=lambda n: (index.id(n), n))
        cset = candidate_set(names, index)
        assert list(cset.names) == expected
        assert cset.items.tolist() == [index.id(n) for n in expected]
        assert cset.items.dtype == np.int64
        assert cset.cols == {n: i for i, n in enumerate(expected)}
    assert index.ids([]).shape == (0,) and index.ids(iter(["s001", "nope"])).tolist() == [2, 41]


def test_window_arrays_keep_the_last_entries_left_padded() -> None:
    index = _index(["a", "b", "c"])
    items, steps, valid = window_arrays([[("a", 1), ("b", 2), ("c", 3)], [], [("x", 7)]], 2,
                                        index)
    assert items.tolist() == [[2, 3], [0, 0], [0, 4]]
    assert steps.tolist() == [[2, 3], [0, 0], [0, 7]]
    assert valid.tolist() == [[True, True], [False, False], [False, True]]


@pytest.mark.parametrize("window_len", [0, 1, 4, 16])
def test_window_arrays_of_a_batch_equal_each_window_on_its_own(window_len: int) -> None:
    """The batch is filled with one lookup and one scatter: every row must still hold its
    own window's last entries, right-aligned, whatever the other rows' lengths."""
    rng = np.random.default_rng(window_len)
    index = _index([f"s{i}" for i in range(30)])
    windows = [[(f"s{rng.integers(40)}", int(rng.integers(1000))) for _ in range(n)]
               for n in rng.integers(0, 25, size=60).tolist()] + [[]]
    items, steps, valid = window_arrays(windows, window_len, index)
    assert items.shape == steps.shape == valid.shape == (len(windows), window_len)
    for row, window in enumerate(windows):
        tail = window[-window_len:] if window_len else []
        pad = window_len - len(tail)
        assert items[row].tolist() == [0] * pad + index.ids([n for n, _ in tail]).tolist()
        assert steps[row].tolist() == [0] * pad + [at for _, at in tail]
        assert valid[row].tolist() == [False] * pad + [True] * len(tail)


def test_time_features_mask_padding_and_the_future() -> None:
    steps = np.array([[0, 0, 150, 300]], dtype=np.int64)
    valid = np.array([[False, False, True, True]])
    query = query_steps(steps, np.array([310]))
    watch, qtime, gaps = time_features(steps, valid, query, ENC)
    assert watch[0, :2].tolist() == [[0, 0], [0, 0]]
    assert watch[0, 2].tolist() == [ENC.hour(np.int64(150)) + 1, 2]  # step 150: day 1
    assert qtime[0, 3].tolist() == [ENC.hour(np.int64(310)) + 1, 3]
    assert gaps[0, :2].sum() == 0 and gaps[0, :, :2].sum() == 0  # padding rows and keys
    assert gaps[0, 2, 3] == 0  # the future
    assert gaps[0, 3, 2] == ENC.gap_bucket(np.int64(160)) + 1
    assert gaps[0, 3, 3] == ENC.gap_bucket(np.int64(10)) + 1
    assert gaps[0, 2, 2] == ENC.gap_bucket(np.int64(150)) + 1  # query of position 2 = 300


def test_gap_buckets_are_monotone_and_start_at_zero() -> None:
    gaps = np.arange(-5, 6000)
    buckets = ENC.gap_bucket(gaps)
    assert buckets[gaps <= 0].max() == 0
    assert (np.diff(buckets) >= 0).all() and buckets.max() == ENC.n_gaps - 1


def test_serving_repeat_features_equal_the_training_form_at_the_last_position() -> None:
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(12)]
    index = _index(names[:8])  # s8..s11 are unknown to the model: OOV, told apart by name
    window_len = 6
    for _ in range(30):
        n = int(rng.integers(0, 9))
        window = [(names[int(rng.integers(12))], 100 + 20 * j) for j in range(n)]
        step = 100 + 20 * n + int(rng.integers(0, 50))
        cands = [names[i] for i in rng.choice(12, size=7, replace=False)]
        cset = candidate_set(cands, index)
        served = repeat_features_last([window], window_len, [step], [cset], 7, ENC)[0]
        tail = window[-window_len:]
        keys = np.zeros((1, window_len), dtype=np.int64)
        steps = np.zeros((1, window_len), dtype=np.int64)
        if tail:
            keys[0, -len(tail):] = [names.index(a) + 1 for a, _ in tail]
            steps[0, -len(tail):] = [s for _, s in tail]
        cand_keys = np.array([[[names.index(c) + 1 for c in cset.names]]], dtype=np.int64)
        cand_keys = np.repeat(cand_keys, window_len, axis=1)
        query = query_steps(steps, np.array([step]))
        trained = repeat_features_positions(keys, steps, keys != 0, query, cand_keys, ENC)
        np.testing.assert_array_equal(served, trained[0, -1])


def _repeat_features_last_by_loop(windows: list[list[tuple[str, int]]], window_len: int,
                                  steps: list[int], cands: list[CandidateSet], width: int
                                  ) -> np.ndarray:
    """The former `repeat_features_last`: a pass over each request's entries in Python."""
    out = np.zeros((len(windows), width, 2), dtype=np.int64)
    for r, (window, step, cset) in enumerate(zip(windows, steps, cands, strict=True)):
        seen: dict[str, list[int]] = {}
        for name, at in window[-window_len:] if window_len else []:
            count_last = seen.setdefault(name, [0, at])
            count_last[0] += 1
            count_last[1] = max(count_last[1], at)
        for name, (count, last) in seen.items():
            col = cset.cols.get(name)
            if col is not None:
                out[r, col] = repeat_buckets(np.array([step - last]), np.array([count]),
                                             ENC)[0]
    return out


@pytest.mark.parametrize("seed", range(3))
def test_serving_repeat_features_of_a_batch_equal_each_request_alone(seed: int) -> None:
    """Requests of several candidate sets (some shared by object, some equal but distinct
    objects), windows longer and shorter than ``window_len``, repeats, out-of-order steps
    and unknown names: the batch's features equal the per-request definition."""
    rng = np.random.default_rng(seed)
    names = [f"s{i}" for i in range(14)]
    index = _index(names[:9])
    for _ in range(40):
        window_len = int(rng.integers(0, 8))
        sets = [candidate_set([names[i] for i in rng.choice(14, size=int(rng.integers(0, 10)),
                                                            replace=False)], index)
                for _ in range(int(rng.integers(1, 4)))]
        b = int(rng.integers(1, 9))
        cands = [sets[int(rng.integers(len(sets)))] for _ in range(b)]
        windows = [[(names[int(rng.integers(14))], int(rng.integers(0, 400)))
                    for _ in range(int(rng.integers(0, 12)))] for _ in range(b)]
        steps = [int(rng.integers(300, 900)) for _ in range(b)]
        width = max([len(c.names) for c in cands] + [1])
        got = repeat_features_last(windows, window_len, steps, cands, width, ENC)
        want = _repeat_features_last_by_loop(windows, window_len, steps, cands, width)
        np.testing.assert_array_equal(got, want)


def test_item_index_refuses_duplicates_and_maps_unknown_to_oov() -> None:
    with pytest.raises(ValueError, match="not unique"):
        ItemIndex(("a", "a"), np.array([1, 1]))
    index = _index(["a", "b"])
    assert index.ids(["b", "nope"]).tolist() == [2, 3]
    prior = index.prior()
    assert prior.shape == (4,) and prior[0] == 0 and prior[3] == 0 and prior[1] > prior[2]


def _repeat_features_by_definition(keys: np.ndarray, steps: np.ndarray, valid: np.ndarray,
                                   query: np.ndarray, cand_keys: np.ndarray,
                                   enc: TimeEncoding) -> np.ndarray:
    """The former `repeat_features_positions`: every (position, candidate, entry) compared."""
    length = keys.shape[1]
    causal = np.tril(np.ones((length, length), dtype=bool))
    seen = causal[None, :, None, :] & valid[:, None, None, :]  # (B, T, 1, J)
    match = (cand_keys[..., None] == keys[:, None, None, :]) & seen  # (B, T, K, J)
    count = match.sum(-1)
    last = np.where(match, steps[:, None, None, :], np.iinfo(np.int64).min).max(-1)
    gap = np.where(count > 0, query[:, :, None] - last, 0)
    return repeat_buckets(gap, count, enc)


@pytest.mark.parametrize("seed", range(4))
def test_repeat_features_positions_equal_the_definition_on_random_windows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    repeats = 0
    for _ in range(40):
        b, length, k = int(rng.integers(1, 9)), int(rng.integers(1, 10)), int(rng.integers(1, 12))
        n_keys = int(rng.integers(1, 8))  # few keys: repeats and multiple matches are common
        keys = rng.integers(0, n_keys, size=(b, length))
        valid = keys != 0
        if rng.random() < 0.3:  # a mask other than keys != 0: masked entries must not count
            valid &= rng.random((b, length)) < 0.7
        steps = rng.integers(0, 3000, size=(b, length))
        if rng.random() < 0.5:
            steps = np.sort(steps, axis=1)  # training's order; the other case: any order
        query = steps + rng.integers(0, 600, size=(b, length))
        positions = length if rng.random() < 0.8 else 1  # 1: broadcast over positions
        cand_keys = rng.integers(0, n_keys + 2, size=(b, positions, k))
        got = repeat_features_positions(keys, steps, valid, query, cand_keys, ENC)
        want = _repeat_features_by_definition(keys, steps, valid, query, cand_keys, ENC)
        assert got.dtype == want.dtype == np.int64
        np.testing.assert_array_equal(got, want)
        repeats += int((want[..., 1] > 1).sum())  # candidates seen twice or more
    assert repeats > 0
