"""Scoring live candidates for a user: the narrow interface the service and `evaluate` share.

The serving path imports this module: numpy and onnxruntime only, never torch.

A `RankRequest` holds what is known at the moment of a request: the user's window (the
watches that precede the request on the timeline, oldest first, as streamer *names* and
steps), the request's step, and the streamers live at that step. A `Scorer` ranks a batch
of requests at once (micro-batching) and returns, per request, the top-k streamers with
their scores, best first. Ties are broken by the model's streamer index (then name), so
the offline evaluation and the online service produce the same lists.

Contract details:

* only the last ``window_len`` window entries are used (callers may pass more);
* duplicate candidate names count once; ``Ranked.streamers`` has exactly
  ``min(k, number of distinct candidates)`` names;
* an empty window gives ``fallback=True`` and the model's popularity prior (log of 1 + the
  streamer's training rows; 0 for streamers the model does not know) as finite scores;
* names the model does not know are scored as its out-of-vocabulary item, never an error.

    >>> scorer = OnnxScorer("out/models/liverank")             # doctest: +SKIP
    >>> scorer.rank([RankRequest([("alice", 10)], 12, ["bob", "alice"])], k=1)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .features import (
    INPUT_NAMES,
    OUTPUT_NAME,
    CandidateSet,
    ItemIndex,
    TimeEncoding,
    candidate_set,
    query_steps,
    rank_of,
    repeat_features_last,
    time_features,
    top_k,
    top_k_rows,
    window_arrays,
)

logger = logging.getLogger(__name__)

MODEL_FORMAT = "liverank-model/1"
MODEL_KEYS = ("format", "version", "arch", "config", "window_len", "time_encoding", "items",
              "popularity", "inputs", "output", "metrics", "files")


@dataclass(frozen=True)
class RankRequest:
    window: Sequence[tuple[str, int]]  # (streamer name, step), oldest -> newest
    step: int  # the request's step (query time)
    candidates: Sequence[str]  # streamer names live at `step`, any order


@dataclass(frozen=True)
class Ranked:
    streamers: list[str]  # top-k, best first; exactly min(k, len(candidates)) of them
    scores: list[float]
    fallback: bool  # the window was empty: the answer comes from the fallback


class Scorer(Protocol):
    version: str
    window_len: int  # how many of a request's latest watches the model reads

    def rank(self, requests: Sequence[RankRequest], k: int) -> list[Ranked]: ...


@dataclass(frozen=True)
class Scored:
    """Every candidate of one request with its score, in tie-break order (not sorted)."""

    streamers: tuple[str, ...]
    scores: np.ndarray  # (C,) float32, aligned with `streamers`
    fallback: bool

    def top(self, k: int) -> Ranked:
        cols = top_k(self.scores, k)
        return Ranked([self.streamers[c] for c in cols],
                      [float(self.scores[c]) for c in cols], self.fallback)

    def rank_of(self, name: str) -> int | None:
        """1-based rank of ``name`` in the full ranking; None when it is not a candidate."""
        try:
            col = self.streamers.index(name)
        except ValueError:
            return None
        return rank_of(self.scores, col)


def rank_scored(scored: Sequence[Scored], k: int) -> list[Ranked]:
    """``[s.top(k) for s in scored]``, with one row-wise top-k per candidate list: requests
    of one step share their candidate tuple, so their scores stack into one matrix."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(scored):
        groups.setdefault(id(s.streamers), []).append(i)
    out: list[Ranked | None] = [None] * len(scored)
    for rows in groups.values():
        names = scored[rows[0]].streamers
        if len(rows) == 1 or not names:
            for i in rows:
                out[i] = scored[i].top(k)
            continue
        matrix = np.stack([scored[i].scores for i in rows])
        cols = top_k_rows(matrix, k)
        values = np.take_along_axis(matrix, cols, axis=1).tolist()
        for i, row_cols, row_values in zip(rows, cols.tolist(), values, strict=True):
            out[i] = Ranked([names[c] for c in row_cols], row_values, scored[i].fallback)
    return out  # type: ignore[return-value]


_NOT_RUN = object()


class Scoring:
    """One `Scorer.rank` call in three steps, for a caller that runs the model on a thread of
    its own: the scorer builds the inputs when it makes this object (Python and small numpy
    work, which holds the GIL), `forward` runs the model (onnxruntime releases the GIL), and
    `scored` / `ranked` check the scores and take each request's top k (the GIL again).

    Why: a worker ran all of `rank` in its scoring thread while its event loop prepared the
    next batch. Every time onnxruntime handed the GIL back, the thread waited for the busy
    loop's switch interval (5 ms) before its next line of Python: measured, a thread ranking
    128 requests a call managed 4.7 calls/s next to a busy Python thread against 87 alone,
    while the model's run alone, in the same thread, kept 80 of its 144 (docs/service.md,
    "Scoring off the GIL"). So the worker builds and ranks on its loop and runs only
    `forward` in the thread. ``scorer.rank(r, k)`` is the same three steps in a row: the
    offline evaluation and the service rank with the same code."""

    def __init__(self, forward: Callable[[], Any], finish: Callable[[Any], list[Scored]],
                 k: int, rank: Callable[[Any], list[Ranked]] | None = None) -> None:
        self._forward, self._finish, self.k = forward, finish, k
        self._rank = rank  # the top k straight from what forward gave; default: of `scored`
        self._raw: Any = _NOT_RUN

    def forward(self) -> None:
        self._raw = self._forward()

    def scored(self) -> list[Scored]:
        if self._raw is _NOT_RUN:
            raise RuntimeError("Scoring.scored() before Scoring.forward()")
        return self._finish(self._raw)

    def ranked(self) -> list[Ranked]:
        if self._rank is None:
            return rank_scored(self.scored(), self.k)
        if self._raw is _NOT_RUN:
            raise RuntimeError("Scoring.ranked() before Scoring.forward()")
        return self._rank(self._raw)


def _fill(out: list[Scored | None], chunk: Sequence[int], sets: Sequence[CandidateSet],
          scores: np.ndarray) -> None:
    for row, i in enumerate(chunk):
        names = sets[i].names
        out[i] = Scored(names, scores[row, : len(names)], False)


def _rows_by_set(sets: Sequence[CandidateSet]) -> dict[int, list[int]]:
    """Row numbers by candidate set (requests of one step share theirs), in first-seen order."""
    rows: dict[int, list[int]] = {}
    for row, cset in enumerate(sets):
        rows.setdefault(id(cset), []).append(row)
    return rows


class ModelDirError(ValueError):
    """An exported model directory that cannot be served: names the file and the problem."""


class BaseScorer:
    """Shared machinery: candidate sets in tie order (cached), fallback, `rank` = top of
    `score_all`. Subclasses implement `_score_batch` for requests with a non-empty window."""

    version: str = "base"
    window_len: int = 16
    max_batch: int = 256
    _cache_size = 256  # candidate lists (one per live step a worker's partitions are at)

    def __init__(self, index: ItemIndex) -> None:
        self.index = index
        self._prior = index.prior()
        self._cands: OrderedDict[tuple[str, ...], CandidateSet] = OrderedDict()
        self._by_id: dict[int, tuple[tuple[str, ...], CandidateSet]] = {}

    def candidates(self, names: Sequence[str]) -> CandidateSet:
        """The candidate set of ``names``, cached by content and, for a tuple, by identity
        too: the live index hands every request of a step the same tuple, and the content
        key (~2,000 names to copy, hash and compare) cost a worker's event loop ~0.15 ms a
        call, 2-3 calls a batch. A tuple cannot change, and the entry holds it, so its id is
        not reused while cached."""
        is_tuple = type(names) is tuple
        if is_tuple:
            hit = self._by_id.get(id(names))
            if hit is not None and hit[0] is names:
                return hit[1]
        key = tuple(names)
        found = self._cands.get(key)
        if found is not None:
            self._cands.move_to_end(key)  # least recently used out
        else:
            found = candidate_set(key, self.index)
            self._cands[key] = found
            if len(self._cands) > self._cache_size:
                self._cands.popitem(last=False)
        if is_tuple:
            if len(self._by_id) >= self._cache_size:
                self._by_id.clear()
            self._by_id[id(names)] = (key, found)  # ``key is names`` for a tuple
        return found

    def rank(self, requests: Sequence[RankRequest], k: int) -> list[Ranked]:
        return rank_scored(self.score_all(requests), k)

    def scoring(self, requests: Sequence[RankRequest], k: int) -> Scoring:
        """`rank` in steps a caller may run on different threads (`Scoring`). Here all the
        work happens in `Scoring.forward`; `ModelScorer` keeps only the model there."""
        return Scoring(lambda: self.score_all(requests), lambda scored: scored, k)

    def score_all(self, requests: Sequence[RankRequest]) -> list[Scored]:
        out, sets, todo = self._plan(requests)
        for lo in range(0, len(todo), self.max_batch):
            chunk = todo[lo : lo + self.max_batch]
            scores = self._score_batch([requests[i] for i in chunk], [sets[i] for i in chunk])
            _fill(out, chunk, sets, scores)
        return out  # type: ignore[return-value]

    def _plan(self, requests: Sequence[RankRequest]
              ) -> tuple[list[Scored | None], list[CandidateSet], list[int]]:
        """Every request's candidate set; the fallback and empty answers filled in; the
        indices of the requests the model scores."""
        # Requests of one step usually share one candidate object: look it up once per call.
        by_object: dict[int, CandidateSet] = {}
        sets = []
        for r in requests:
            cset = by_object.get(id(r.candidates))
            if cset is None:
                cset = by_object[id(r.candidates)] = self.candidates(r.candidates)
            sets.append(cset)
        out: list[Scored | None] = [None] * len(requests)
        todo: list[int] = []
        for i, (req, cset) in enumerate(zip(requests, sets, strict=True)):
            if len(req.window) == 0 or self.window_len == 0:
                out[i] = Scored(cset.names, self._prior[cset.items], True)
            elif not cset.names:
                out[i] = Scored((), np.zeros(0, dtype=np.float32), False)
            else:
                todo.append(i)
        return out, sets, todo

    def _score_batch(self, requests: Sequence[RankRequest],
                     sets: Sequence[CandidateSet]) -> np.ndarray:
        raise NotImplementedError


class ModelScorer(BaseScorer):
    """Builds the model's inputs (see `liverank.model.features`) and runs `_forward`."""

    # The model reads one candidate row for a whole batch (``cand_items`` of shape (1, C),
    # broadcast over the batch) and scores it as it scores that row repeated: then a chunk
    # holds the requests of one candidate set and the model gathers C item vectors instead
    # of B x C (the largest cost of a run with a thousand live streams: a batch of 42
    # requests x 1,310 streams 2.23 against 4.85 ms, docs/service.md). Set by
    # `probe_shared_candidates`, never assumed.
    shared_candidates = False
    # A candidate set gets a chunk (and a model run) of its own only when sharing its row
    # saves at least this many gathered item vectors, (requests - 1) x candidates: a chunk
    # costs ~0.3 ms of inputs and a run's fixed cost, a gathered vector ~0.05 us. Sets below
    # it go together, a row per request, as before (the demo's `small` log, ~9 requests a
    # step and 39 live streams: a chunk per set ranked 10.8-11.5k requests/s, a row per
    # request 12.5-13.7k; docs/service.md).
    share_min_cells = 8192

    def __init__(self, index: ItemIndex, window_len: int, time: TimeEncoding,
                 version: str) -> None:
        super().__init__(index)
        self.window_len = window_len
        self.time = time
        self.version = version

    def probe_shared_candidates(self) -> bool:
        """Run the model on three requests twice, the candidate row repeated and given once;
        `shared_candidates` holds when both give the same scores (exported graphs broadcast
        the candidates' batch axis; a graph that does not keeps a row per request). A model
        that cannot score the repeated rows either raises: it cannot serve at all."""
        names = self.index.names[:6]
        window = [(n, 10 * i) for i, n in enumerate(names)]
        cands = [*names[::2], "\x00probe-unknown"]
        requests = [RankRequest(window[:1], 70, cands), RankRequest(window, 80, cands),
                    RankRequest(window[2:], 200, cands)]
        sets = [self.candidates(cands)] * len(requests)
        tiled = self.inputs(requests, sets, share=False)
        self.shared_candidates = False
        want = self._forward(tiled)
        try:
            got = self._forward({**tiled, "cand_items": tiled["cand_items"][:1]})
            same = got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-5,
                                                                atol=1e-6))
        except Exception as exc:  # onnxruntime raises its own types for a shape it refuses
            logger.warning("model %s does not take one candidate row for a batch (%s); "
                           "it gets a row per request", self.version, exc)
            return False
        if not same:
            logger.warning("model %s scores one candidate row for a batch unlike the row "
                           "repeated; it gets a row per request", self.version)
            return False
        self.shared_candidates = True
        return True

    def inputs(self, requests: Sequence[RankRequest], sets: Sequence[CandidateSet],
               share: bool | None = None) -> dict[str, np.ndarray]:
        """The model's inputs: `window_inputs` and `candidate_inputs` of the requests."""
        return {**self.window_inputs(requests), **self.candidate_inputs(requests, sets, share)}

    def window_inputs(self, requests: Sequence[RankRequest]) -> dict[str, np.ndarray]:
        """``items``, ``watch_time``, ``query_time`` and ``gaps``: what the windows and the
        request steps give, whatever the candidates (`scoring` builds them once a batch)."""
        items, steps, valid = window_arrays([r.window for r in requests], self.window_len,
                                            self.index)
        request_steps = np.asarray([int(r.step) for r in requests], dtype=np.int64)
        watch_time, query_time, gaps = time_features(steps, valid,
                                                     query_steps(steps, request_steps),
                                                     self.time)
        return {"items": items, "watch_time": watch_time, "query_time": query_time,
                "gaps": gaps}

    def candidate_inputs(self, requests: Sequence[RankRequest], sets: Sequence[CandidateSet],
                         share: bool | None = None) -> dict[str, np.ndarray]:
        """``cand_items`` and ``cand_repeat``. ``cand_items`` is one row (1, C) when every
        request has the same candidate set and the model takes that (``share``, default
        `shared_candidates`), else (B, widest set) with zeros after each row's set."""
        width = max(len(s.names) for s in sets)
        by_set = _rows_by_set(sets)
        if (self.shared_candidates if share is None else share) and len(by_set) == 1:
            cand_items = sets[0].items[None, :]
        else:
            cand_items = np.zeros((len(requests), width), dtype=np.int64)
            for rows in by_set.values():  # one assignment per distinct set
                cset = sets[rows[0]]
                cand_items[rows, : len(cset.names)] = cset.items
        cand_repeat = repeat_features_last([r.window for r in requests], self.window_len,
                                           [int(r.step) for r in requests], sets, width,
                                           self.time)
        return {"cand_items": cand_items, "cand_repeat": cand_repeat}

    def scoring(self, requests: Sequence[RankRequest], k: int) -> Scoring:
        """The inputs of every chunk of ``max_batch`` requests now; the model's runs in
        `Scoring.forward`; the checks, the equalised unknown names and the top k after."""
        out, sets, todo = self._plan(requests)
        chunks: list[tuple[list[int], dict[str, np.ndarray], list[CandidateSet]]] = []
        groups = [todo]
        if self.shared_candidates:  # a chunk per large candidate set, one row for it
            groups, rest = [], []
            for rows in _rows_by_set([sets[i] for i in todo]).values():
                members = [todo[j] for j in rows]
                if (len(members) - 1) * len(sets[members[0]].names) >= self.share_min_cells:
                    groups.append(members)
                else:
                    rest.extend(members)
            if rest:
                groups.append(sorted(rest))
        # The window side once for the batch, each chunk's rows taken from it: a batch of
        # requests at a few steps makes a chunk per candidate set, and the window side's
        # numpy calls cost about the same for 8 requests as for 100 (draining 16-request
        # batches, `inputs` took ~0.8 ms of the event loop's CPU a chunk, 2 chunks a batch).
        windowed = self.window_inputs([requests[i] for i in todo]) if todo else {}
        row_of = {i: row for row, i in enumerate(todo)}
        for chunk in (g[lo : lo + self.max_batch] for g in groups
                      for lo in range(0, len(g), self.max_batch)):
            chunk_sets = [sets[i] for i in chunk]
            if chunk == todo:
                inputs = dict(windowed)
            else:
                picked = np.fromiter(map(row_of.__getitem__, chunk), dtype=np.intp,
                                     count=len(chunk))
                inputs = {name: a[picked] for name, a in windowed.items()}
            inputs.update(self.candidate_inputs([requests[i] for i in chunk], chunk_sets))
            chunks.append((chunk, inputs, chunk_sets))
        forward = self._forward

        def run() -> list[np.ndarray]:
            return [forward(inputs) for _, inputs, _ in chunks]

        def finish(raw: list[np.ndarray]) -> list[Scored]:
            for (chunk, inputs, chunk_sets), scores in zip(chunks, raw, strict=True):
                self._check(scores, inputs, chunk_sets)
                _fill(out, chunk, sets, scores)
            return out  # type: ignore[return-value]

        def rank(raw: list[np.ndarray]) -> list[Ranked]:
            """`rank_scored` of what `finish` gives, from each chunk's score matrix: the
            rows of one candidate set ranked together, no per-request `Scored`."""
            ranked: list[Ranked | None] = [None] * len(requests)
            for (chunk, inputs, chunk_sets), scores in zip(chunks, raw, strict=True):
                self._check(scores, inputs, chunk_sets)
                for rows in _rows_by_set(chunk_sets).values():
                    names = chunk_sets[rows[0]].names
                    matrix = scores[rows, : len(names)]
                    cols = top_k_rows(matrix, k)
                    values = np.take_along_axis(matrix, cols, axis=1).tolist()
                    for row, row_cols, row_values in zip(rows, cols.tolist(), values,
                                                         strict=True):
                        ranked[chunk[row]] = Ranked([names[c] for c in row_cols], row_values,
                                                    False)
            rest = [i for i, r in enumerate(ranked) if r is None]  # fallback, no candidates
            for i, r in zip(rest, rank_scored([out[i] for i in rest], k),  # type: ignore[misc]
                            strict=True):
                ranked[i] = r
            return ranked  # type: ignore[return-value]

        return Scoring(run, finish, k, rank)

    def rank(self, requests: Sequence[RankRequest], k: int) -> list[Ranked]:
        job = self.scoring(requests, k)
        job.forward()
        return job.ranked()

    def score_all(self, requests: Sequence[RankRequest]) -> list[Scored]:
        job = self.scoring(requests, 0)
        job.forward()
        return job.scored()

    def _check(self, scores: np.ndarray, inputs: dict[str, np.ndarray],
               sets: Sequence[CandidateSet]) -> None:
        want = inputs["cand_repeat"].shape[:2]
        if scores.shape != want:
            raise ValueError(f"model {self.version} gave scores of shape {scores.shape} for "
                             f"{want[0]} requests of {want[1]} candidates")
        if not np.isfinite(scores).all():
            raise FloatingPointError(f"model {self.version} produced non-finite scores")
        self._equalise_oov(scores, inputs["cand_repeat"], sets)

    def _equalise_oov(self, scores: np.ndarray, repeat: np.ndarray,
                      sets: Sequence[CandidateSet]) -> None:
        """Unknown streamers with the same repeat features get bitwise-equal scores.

        They are the same model input, but a GEMM may round them differently by their
        position in the batch; equal scores let the documented tie-break (name) decide.
        """
        oov = self.index.oov
        for rows in _rows_by_set(sets).values():  # a batch holds few distinct sets
            cols = np.flatnonzero(sets[rows[0]].items == oov)
            if cols.shape[0] < 2:
                continue
            for row in rows:
                rep = repeat[row, cols]
                _, first, inverse = np.unique(rep[:, 0] * 1024 + rep[:, 1],
                                              return_index=True, return_inverse=True)
                scores[row, cols] = scores[row, cols[first]][inverse]

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_model_json(model_dir: str | Path) -> dict[str, Any]:
    """Read and check ``model.json`` and the files it names (hashes, pieces, sizes)."""
    model_dir = Path(model_dir)
    path = model_dir / "model.json"
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: not a directory")
    if not path.exists():
        raise ModelDirError(f"{model_dir}: no model.json (not an exported model directory)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    missing = [k for k in MODEL_KEYS if k not in meta]
    if missing:
        raise ModelDirError(f"{path}: missing keys {missing}")
    if meta["format"] != MODEL_FORMAT:
        raise ModelDirError(f"{path}: format {meta['format']!r}, expected {MODEL_FORMAT!r}")
    _check_files(model_dir, meta["files"])
    _check_pieces(path, meta)
    return meta


def _check_files(model_dir: Path, files: dict[str, Any]) -> None:
    if "model.onnx" not in files:
        raise ModelDirError(f"{model_dir}/model.json: 'files' does not list model.onnx")
    for name, entry in files.items():
        piece = model_dir / name
        if not piece.exists():
            raise ModelDirError(f"{piece}: missing (listed in model.json)")
        digest = sha256_file(piece)
        if digest != entry.get("sha256"):
            raise ModelDirError(
                f"{piece}: sha256 {digest[:12]}... does not match model.json "
                f"({str(entry.get('sha256'))[:12]}...): the file was changed or belongs to "
                "another export")


def _check_pieces(path: Path, meta: dict[str, Any]) -> None:
    config, items, popularity = meta["config"], meta["items"], meta["popularity"]
    n_items = config.get("n_items")
    if not isinstance(items, list) or len(items) != n_items:
        raise ModelDirError(f"{path}: {len(items)} item names but config.n_items={n_items}")
    if len(popularity) != len(items):
        raise ModelDirError(f"{path}: {len(popularity)} popularity counts for "
                            f"{len(items)} items")
    if len(set(items)) != len(items):
        raise ModelDirError(f"{path}: item names are not unique")
    if int(meta["window_len"]) != int(config.get("window_len", -1)):
        raise ModelDirError(f"{path}: window_len {meta['window_len']} differs from "
                            f"config.window_len {config.get('window_len')}")
    if sorted(meta["inputs"]) != sorted(INPUT_NAMES) or meta["output"] != OUTPUT_NAME:
        raise ModelDirError(f"{path}: inputs {sorted(meta['inputs'])} / output "
                            f"{meta['output']!r}, expected {sorted(INPUT_NAMES)} / "
                            f"{OUTPUT_NAME!r}")


class OnnxScorer(ModelScorer):
    """Scores with an exported ``model.onnx`` through onnxruntime (CPU, ``threads`` intra-op
    threads). Refuses a directory whose files or pieces do not match its ``model.json``."""

    def __init__(self, model_dir: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        meta = read_model_json(self.model_dir)
        self.meta = meta
        index = ItemIndex(tuple(meta["items"]), np.asarray(meta["popularity"], dtype=np.int64))
        super().__init__(index, int(meta["window_len"]),
                         TimeEncoding.from_json(meta["time_encoding"]), str(meta["version"]))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.model_dir / "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelDirError(f"{self.model_dir}/model.onnx: onnxruntime cannot load it: "
                                f"{exc}") from exc
        names = [i.name for i in self.session.get_inputs()]
        unknown = set(names) - set(INPUT_NAMES)
        if unknown:
            raise ModelDirError(f"{self.model_dir}/model.onnx: unexpected inputs "
                                f"{sorted(unknown)}")
        self._input_names = names  # the exporter drops inputs a model ignores
        try:
            self.probe_shared_candidates()
        except Exception as exc:  # loaded, but cannot score: refuse it like a broken file
            raise ModelDirError(f"{self.model_dir}/model.onnx: onnxruntime cannot score "
                                f"three probe requests: {exc}") from exc
        logger.info("loaded model dir=%s version=%s items=%d window_len=%d threads=%d "
                    "shared_candidates=%s", self.model_dir, self.version, index.n_items,
                    self.window_len, threads, self.shared_candidates)

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics", {}))

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {n: inputs[n] for n in self._input_names}
        (scores,) = self.session.run([OUTPUT_NAME], feed)
        return np.asarray(scores, dtype=np.float32)


def load_scorer(model_dir: str | Path, threads: int = 1) -> Scorer:
    """The scorer of an exported model directory (hash-checked `OnnxScorer`); the one loader
    of the service and of ``evaluate``. `ModelDirError` names what is wrong with it."""
    return OnnxScorer(model_dir, threads=threads)


def model_stamp(model_dir: str | Path) -> tuple[str, int, int, int] | None:
    """What changes when a model directory is replaced: its real path and inode, and
    model.json's mtime and size. None while the path does not exist (mid-rename)."""
    try:
        real = os.path.realpath(model_dir)
        meta = os.stat(os.path.join(real, "model.json"))
        return real, os.stat(real).st_ino, meta.st_mtime_ns, meta.st_size
    except OSError:
        return None
