"""CPU training of the sequence models, with early stopping on validation NDCG@10.

    liverank train --data out/data/small.csv --out out/models/liverank --preset quick

Data: LiveRec's time split (`liverank.model.data.split`): train on rows starting before
``pivot_1``, validate on ``[pivot_1, pivot_2)`` with the evaluation protocol itself (a
fixed, evenly spaced subset of validation targets ranked among the live streamers).

Sequences: each user's training rows in timeline order (step, then file order) cut into
chunks of L+1 from the end; position t of a chunk predicts watch t+1 at that watch's step
(the query step). Loss: sampled softmax of the true streamer against N negatives drawn
from the streamers live at the target's step (``negatives="live"``, never an off-air one,
never the positive) or from all streamers (``"uniform"``); MF uses BPR.

The checkpoint directory holds ``weights.pt`` (best state dict) and ``checkpoint.json``
(model and training config, item index with training counts, time encoding, history,
lineage). Rows are taken in event order (`in_event_order`), so a log read back from the
event topics and the same rows from a CSV train identically.

Retraining (`retrain`, ``liverank train --warm-start CKPT``): start from a trained checkpoint
instead of random weights, keep its item ids and grow the vocabulary with the streamers the
new training rows know and it did not (`grow_items`); the warm start is validated before
the first epoch and stays the checkpoint unless an epoch beats it. ``lineage`` in
checkpoint.json (and in the exported model.json) names the parent version and the data
period:

    liverank train --from-topics --until 2019-11-02T00:00Z --warm-start out/models/liverank \
        --out out/models/liverank-next --preset quick
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from liverank.core.timebase import DEFAULT_EPOCH_MS, event_time_ms

from .checkpoint import (
    CHECKPOINT_FORMAT,
    TorchScorer,
    WarmStart,
    grow_items,
    load_warm_start,
    read_checkpoint_meta,
    save_checkpoint,
)
from .data.availability import Availability, availability
from .data.split import TimeSplit, time_split
from .data.twitch import Interactions, in_event_order
from .evaluate import REPEAT_WINDOW, EvalTarget, period
from .features import (
    ItemIndex,
    TimeEncoding,
    repeat_features_positions,
    time_features,
)
from .metrics import Accumulator
from .sasrec import ModelConfig, SeqRec
from .scorer import RankRequest

logger = logging.getLogger(__name__)

ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "liverank": {"time": True, "repeat": True, "negatives": "live", "loss": "softmax"},
    "sasrec": {"time": False, "repeat": False, "negatives": "uniform", "loss": "softmax"},
    "gru": {"time": False, "repeat": False, "negatives": "uniform", "loss": "softmax"},
    "mf": {"time": False, "repeat": False, "negatives": "uniform", "loss": "bpr"},
}
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 8, "patience": 2},
    "full": {"epochs": 40, "patience": 4},
    "tiny": {"epochs": 2, "patience": 1, "val_targets": 200},  # tests
}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "quick"
    epochs: int = 8
    patience: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    negatives: str = "live"  # live | uniform
    n_negatives: int = 32
    loss: str = "softmax"  # softmax | bpr
    availability: str = "broadcast"
    val_offset: int = 500
    test_offset: int = 250
    val_targets: int = 2000
    min_count: int = 2  # rarer training streamers share the OOV item
    seed: int = 0
    threads: int = 2
    max_minutes: float = 0.0  # 0: no time budget

    def __post_init__(self) -> None:
        if self.negatives not in ("live", "uniform"):
            raise ValueError(f"negatives must be 'live' or 'uniform', got {self.negatives!r}")
        if self.loss not in ("softmax", "bpr"):
            raise ValueError(f"loss must be 'softmax' or 'bpr', got {self.loss!r}")


def configs(arch: str = "liverank", preset: str = "quick", **overrides: Any
            ) -> tuple[ModelConfig, TrainConfig]:
    """Model and training config for an arch and preset; ``None`` overrides are ignored."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"unknown arch {arch!r}: use one of {sorted(ARCH_DEFAULTS)}")
    values = {**ARCH_DEFAULTS[arch], **PRESETS[preset], "preset": preset}
    values |= {k: v for k, v in overrides.items() if v is not None}
    model_keys = set(ModelConfig.__dataclass_fields__)
    train_keys = set(TrainConfig.__dataclass_fields__)
    unknown = set(values) - model_keys - train_keys
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    model = ModelConfig(arch=arch, **{k: v for k, v in values.items()
                                      if k in model_keys and k != "arch"})
    train = TrainConfig(**{k: v for k, v in values.items() if k in train_keys})
    return model, train


# -- data --------------------------------------------------------------------------------


def build_index(ds: Interactions, train_mask: np.ndarray, min_count: int,
                base: ItemIndex | None = None) -> tuple[ItemIndex, np.ndarray]:
    """Item index of streamers with >= min_count training rows (popularity order, then name)
    and the map dataset streamer index -> model item (OOV for the rest, 0 for padding).

    With ``base`` (a warm start's index): its names keep their ids ``1..n`` whatever their
    count now, and the streamers it lacks with >= min_count rows follow (popularity order,
    then name). Counts are the training rows of ``ds`` (0 for a base streamer absent now).
    """
    counts = np.bincount(ds.streamer[train_mask], minlength=ds.n_streamers + 1)
    counts[0] = 0
    idx = np.flatnonzero(counts >= max(min_count, 1))
    if base is not None:
        idx = idx[base.ids(ds.streamer_names[idx].astype(str)) == base.oov]
    names = ds.streamer_names[idx].astype(str)
    order = np.lexsort((names, -counts[idx]))
    added = tuple(names[order].tolist())
    if base is None:
        index = ItemIndex(added, counts[idx[order]].astype(np.int64))
    else:
        by_name = ds.streamer_index()
        old = np.asarray([counts[by_name[n]] if n in by_name else 0 for n in base.names],
                         dtype=np.int64)
        index = ItemIndex(base.names + added,
                          np.concatenate([old, counts[idx[order]]]).astype(np.int64))
    item_of = index.ids(ds.streamer_names.astype(str))
    item_of[0] = 0
    return index, item_of


@dataclass(frozen=True)
class Sequences:
    """Training chunks, left-padded: inputs and targets as dataset streamer keys and steps."""

    keys: np.ndarray  # (S, L)
    steps: np.ndarray  # (S, L)
    target_keys: np.ndarray  # (S, L), 0 where the position has no target
    target_steps: np.ndarray  # (S, L)

    def __len__(self) -> int:
        return int(self.keys.shape[0])


def make_sequences(ds: Interactions, mask: np.ndarray, window_len: int) -> Sequences:
    """Each user's rows of ``mask`` in timeline order (step, then row), cut into chunks of
    ``window_len`` targets from the end (the first row is no target); a chunk's inputs are
    the rows just before its targets, left-padded."""
    rows = np.flatnonzero(mask)
    rows = rows[np.lexsort((rows, ds.start[rows], ds.user[rows]))]
    user = ds.user[rows]
    bounds = np.flatnonzero(np.diff(user)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.concatenate([bounds, [rows.shape[0]]]).astype(np.int64)
    # Chunk c of a user (c = 0 at its end) holds the targets [max(a + 1, stop - L), stop)
    # with stop = b - c L: user by user, newest chunk first.
    n_chunks = -(-np.maximum(ends - starts - 1, 0) // window_len)
    owner = np.repeat(np.arange(starts.shape[0]), n_chunks)
    first_chunk = np.cumsum(n_chunks) - n_chunks
    c = np.arange(owner.shape[0], dtype=np.int64) - first_chunk[owner]
    stop = ends[owner] - c * window_len
    lo = np.maximum(starts[owner] + 1, stop - window_len)
    # Column j of a chunk is target stop - L + j; the first L - (stop - lo) are padding.
    cols = np.arange(window_len, dtype=np.int64)
    target = stop[:, None] - window_len + cols
    real = cols >= window_len - (stop - lo)[:, None]
    target = np.where(real, target, 1)  # any index: masked below
    streamer, start = ds.streamer[rows].astype(np.int64), ds.start[rows].astype(np.int64)
    zero = np.int64(0)
    return Sequences(np.where(real, streamer[target - 1], zero),
                     np.where(real, start[target - 1], zero),
                     np.where(real, streamer[target], zero),
                     np.where(real, start[target], zero))


class LiveSampler:
    """Negatives live at a step: uniform over the live streamers, never the positive."""

    def __init__(self, live: Availability, n_streamers: int) -> None:
        self.live = live  # (n_streamers: unused since the search runs inside each step)
        # Rounds of the binary search inside a step's live list (the longest one).
        self.depth = int(live.live_counts().max(initial=0)).bit_length()

    def sample(self, steps: np.ndarray, positives: np.ndarray, n: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(M,) steps and positive streamers -> (M, n) negatives and a validity mask (False
        where fewer than two streamers were live)."""
        steps = np.asarray(steps, dtype=np.int64)
        positives = np.asarray(positives, dtype=np.int64)
        inside = (steps >= 0) & (steps < self.live.n_steps)
        s = np.where(inside, steps, 0)
        lo = self.live.indptr[s]
        count = np.where(inside, self.live.indptr[s + 1] - lo, 0)
        # The positive's place in its step's (sorted) live list.
        at = _lower_bound(self.live.streamers, lo, count, positives, self.depth)
        last = self.live.streamers.shape[0] - 1
        found = (at < count) & (self.live.streamers[np.minimum(lo + at, last)] == positives)
        choices = count - found  # live streamers other than the positive
        draw = np.floor(rng.random((steps.shape[0], n)) * np.maximum(choices, 1)[:, None])
        draw = draw.astype(np.int64)
        skip = found[:, None] & (draw >= at[:, None])  # step over the positive
        neg = self.live.streamers[np.minimum(lo[:, None] + draw + skip, last)]
        ok = np.broadcast_to((choices > 0)[:, None], neg.shape).copy()
        return np.where(ok, neg, 0).astype(np.int64), ok


def _lower_bound(values: np.ndarray, lo: np.ndarray, count: np.ndarray, x: np.ndarray,
                 depth: int) -> np.ndarray:
    """Per i: how many of ``values[lo[i] : lo[i] + count[i]]`` (sorted ascending) are below
    ``x[i]``: a binary search in every segment at once, ``depth`` rounds (enough when
    ``2**depth > count``; none when ``values`` is empty, all counts then being 0). Each
    search stays inside its own short segment, where one search over a global (step,
    streamer) key array missed the cache at every level."""
    left = np.zeros_like(count)
    right = count.copy()
    last = max(values.shape[0] - 1, 0)
    for _ in range(depth):
        open_ = left < right
        mid = (left + right) >> 1
        below = values[np.minimum(lo + mid, last)] < x
        left = np.where(open_ & below, mid + 1, left)
        right = np.where(open_ & ~below, mid, right)
    return left


@dataclass
class Batcher:
    """Turns chunk indexes into model tensors (numpy features shared with serving)."""

    seqs: Sequences
    item_of: np.ndarray
    index: ItemIndex
    model: ModelConfig
    cfg: TrainConfig
    enc: TimeEncoding
    sampler: LiveSampler | None

    def __call__(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        s = self.seqs
        keys, steps = s.keys[idx], s.steps[idx]
        tkeys, tsteps = s.target_keys[idx], s.target_steps[idx]
        valid = keys != 0
        watch_time, query_time, gaps = time_features(steps, valid, tsteps, self.enc)
        b, length = keys.shape
        flat_steps, flat_pos = tsteps.reshape(-1), tkeys.reshape(-1)
        n = self.cfg.n_negatives
        if self.cfg.negatives == "live" and self.sampler is not None:
            neg, ok = self.sampler.sample(flat_steps, flat_pos, n, rng)
        else:
            # Uniform over the dataset's streamers, not over model items: the OOV item
            # stands for every rare streamer and must be drawn as often as they are, else
            # it is a frequent positive that is never a negative and its score grows until
            # all unknown candidates (tied) fill the top of every ranking.
            neg = rng.integers(1, self.item_of.shape[0], size=(flat_pos.shape[0], n))
            ok = self.item_of[neg] != self.item_of[flat_pos][:, None]
        cand_keys = np.concatenate([tkeys[..., None], neg.reshape(b, length, n)], axis=-1)
        if self.model.repeat:
            rep = repeat_features_positions(keys, steps, valid, tsteps, cand_keys, self.enc)
        else:
            rep = np.zeros(cand_keys.shape + (2,), dtype=np.int64)
        t = torch.from_numpy
        return {"items": t(self.item_of[keys]), "watch_time": t(watch_time),
                "query_time": t(query_time), "gaps": t(gaps),
                "cand_items": t(self.item_of[cand_keys]), "cand_repeat": t(rep),
                "neg_ok": t(ok.reshape(b, length, n)), "valid": t(valid & (tkeys != 0))}


def batch_loss(model: SeqRec, batch: dict[str, torch.Tensor], loss: str) -> torch.Tensor:
    scores = model.position_scores(batch["items"], batch["watch_time"], batch["query_time"],
                                   batch["gaps"], batch["cand_items"],
                                   batch["cand_repeat"])  # (B, L, 1 + N)
    pos, neg = scores[..., 0], scores[..., 1:]
    ok, valid = batch["neg_ok"], batch["valid"]
    if loss == "bpr":
        per = -F.logsigmoid(pos[..., None] - neg) * ok
        per = per.sum(-1) / ok.sum(-1).clamp(min=1)
    else:
        logits = torch.cat([pos[..., None], neg.masked_fill(~ok, -1e9)], dim=-1)
        per = -logits.log_softmax(-1)[..., 0]
    return (per * valid).sum() / valid.sum().clamp(min=1)


def validate(scorer: TorchScorer, targets: list[EvalTarget], batch: int = 256) -> dict:
    acc = Accumulator()
    for lo in range(0, len(targets), batch):
        chunk = targets[lo : lo + batch]
        for t, s in zip(chunk, scorer.score_all([t.request for t in chunk]), strict=True):
            acc.add(s.rank_of(t.truth), t.repeat)
    return acc.result()


# -- the loop ----------------------------------------------------------------------------


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_ndcg10: float
    history: list[dict[str, Any]]
    seconds_per_epoch: float
    sequences_per_second: float


def train(ds: Interactions, out: str | Path, model_cfg: ModelConfig, cfg: TrainConfig,
          progress: bool = True, *, parent: str | Path | None = None, grow_init: str = "oov",
          period: dict[str, Any] | None = None, epoch_ms: int = DEFAULT_EPOCH_MS
          ) -> TrainResult:
    """Train on the rows of ``ds`` before the validation period, early-stop on validation
    NDCG@10, write the best checkpoint to ``out``.

    ``parent``: a checkpoint to warm-start from (`retrain` builds the configs for it):
    its weights, its item ids kept, the vocabulary grown by the streamers with >= min_count
    training rows it did not know (`grow_items` with ``grow_init``); ``model_cfg`` must equal
    the parent's apart from ``n_items``. ``period``: facts about where the rows came from
    (e.g. the cut of a topic read), added to the lineage's data period; ``epoch_ms`` turns
    its steps into event times.
    """
    out = Path(out)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    ds = in_event_order(ds)
    split = time_split(ds, cfg.val_offset, cfg.test_offset)
    train_mask = ds.start < split.pivot_1
    if not train_mask.any():
        raise ValueError(f"{ds.source}: no training rows before step {split.pivot_1} "
                         f"(max_step {split.max_step}); lower --val-offset/--test-offset")
    warm = load_warm_start(parent, model_cfg) if parent is not None else None
    index, item_of = build_index(ds, train_mask, cfg.min_count,
                                 base=warm.index if warm else None)
    model_cfg = replace(model_cfg, n_items=index.n_items)
    enc = warm.enc if warm else TimeEncoding()
    seqs = make_sequences(ds, train_mask, model_cfg.window_len)
    if len(seqs) == 0:
        raise ValueError(f"{ds.source}: no user has two training rows")
    live = availability(ds, cfg.availability)  # type: ignore[arg-type]
    sampler = LiveSampler(live, ds.n_streamers) if cfg.negatives == "live" else None
    batcher = Batcher(seqs, item_of, index, model_cfg, cfg, enc, sampler)
    val = _validation_targets(ds, split, model_cfg.window_len, cfg, live)
    if warm:
        model = grow_items(warm.model, index.n_items - warm.index.n_items, grow_init)
    else:
        model = SeqRec(model_cfg)
    opt = _adam(model, cfg)
    now = datetime.now(UTC)  # to the millisecond: a retrain's version never equals its parent's
    version = f"{model_cfg.arch}-{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z"
    scorer = TorchScorer(model, index, enc, version)
    lineage = _lineage(ds, split, warm, index, grow_init, period, epoch_ms)
    logger.info("train arch=%s items=%d new_items=%d sequences=%d val_targets=%d split=%s "
                "parent=%s", model_cfg.arch, index.n_items, lineage["vocabulary"]["added"],
                len(seqs), len(val), split, lineage["parent"])
    history: list[dict[str, Any]] = []
    best, best_epoch, waited, deadline = -1.0, 0, 0, _deadline(cfg)

    def save(metrics: dict[str, Any]) -> None:
        meta = _meta(ds, model_cfg, cfg, index, enc, split, version, history, metrics)
        save_checkpoint(out, model, meta | {"lineage": lineage})

    if warm:  # epoch 0: the grown parent, before any step; kept unless an epoch beats it
        metrics = validate(scorer, val)
        best = float(metrics["all"]["NDCG@10"])  # type: ignore[index]
        lineage["warm_start"]["val_ndcg10"] = best
        lineage["warm_start"]["val_hr1"] = float(metrics["all"]["HR@1"])  # type: ignore[index]
        logger.info("warm start val_ndcg10=%.4f", best)
        save(metrics)
    for epoch in range(1, cfg.epochs + 1):
        stats = _epoch(model, opt, batcher, len(seqs), cfg, rng, epoch, progress)
        metrics = validate(scorer, val)
        ndcg = float(metrics["all"]["NDCG@10"])  # type: ignore[index]
        stats |= {"epoch": epoch, "val_ndcg10": ndcg,
                  "val_hr1": float(metrics["all"]["HR@1"])}  # type: ignore[index]
        history.append(stats)
        logger.info("epoch=%d loss=%.4f seq_per_s=%.0f seconds=%.1f val_ndcg10=%.4f", epoch,
                    stats["loss"], stats["sequences_per_s"], stats["seconds"], ndcg)
        if ndcg > best:
            best, best_epoch, waited = ndcg, epoch, 0
            save(metrics)
        else:
            waited += 1
            if waited >= cfg.patience:
                logger.info("early stop: no NDCG@10 gain for %d epochs", waited)
                break
        if deadline and time.monotonic() > deadline:
            logger.info("time budget of %.1f minutes spent", cfg.max_minutes)
            break
    _update_history(out, history)
    secs = float(np.mean([h["seconds"] for h in history])) if history else 0.0
    rate = float(np.mean([h["sequences_per_s"] for h in history])) if history else 0.0
    return TrainResult(out, best_epoch, best, history, secs, rate)


# -- warm starts -------------------------------------------------------------------------


def retrain(ds: Interactions, out: str | Path, parent: str | Path, *,
            preset: str | None = None, progress: bool = True, grow_init: str = "oov",
            period: dict[str, Any] | None = None, epoch_ms: int = DEFAULT_EPOCH_MS,
            **overrides: Any) -> TrainResult:
    """Continue training the checkpoint ``parent`` on ``ds`` and write a new checkpoint with
    its lineage (parent version, data period, items added) to ``out``.

    Configs: the parent's model config (``overrides`` may repeat its values, not change
    them) and its training config, with ``preset``'s epochs/patience and then ``overrides``
    (``None`` values ignored) on top. The function a periodic retrain (``liverank train
    --warm-start``) calls; export the result with `liverank.model.export.export`.
    """
    try:
        meta = read_checkpoint_meta(parent)
        model_cfg = ModelConfig.from_json(meta["model"])
        base = dict(meta["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        if str(parent) not in reason:
            reason = f"{parent}: cannot warm-start from it ({type(exc).__name__}: {reason})"
        raise ValueError(reason) from exc
    given = {k: v for k, v in overrides.items() if v is not None}
    model_keys = set(ModelConfig.__dataclass_fields__)
    changed = [f"{k} (parent {getattr(model_cfg, k)!r}, asked {v!r})"
               for k, v in given.items() if k in model_keys and getattr(model_cfg, k) != v]
    if changed:
        raise ValueError(f"{parent}: a warm start keeps the parent's model config; asked to "
                         f"change {', '.join(changed)}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    values = base
    if preset is not None:
        values |= {**PRESETS[preset], "preset": preset}
    values |= {k: v for k, v in given.items() if k not in model_keys}
    unknown = set(values) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    return train(ds, out, model_cfg, TrainConfig(**values), progress, parent=parent,
                 grow_init=grow_init, period=period, epoch_ms=epoch_ms)


def _lineage(ds: Interactions, split: TimeSplit, warm: WarmStart | None, index: ItemIndex,
             grow_init: str, period: dict[str, Any] | None, epoch_ms: int) -> dict[str, Any]:
    """Where a model comes from: its parent (None when trained from scratch), the items
    it added, and the data period (steps and event times; training rows start before
    ``validation[0]``; rows from ``held_out_from`` on are not used)."""

    def iso(step: int) -> str:
        return datetime.fromtimestamp(event_time_ms(step, epoch_ms) / 1000, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    first, last = int(ds.start.min()), int(ds.start.max())
    data: dict[str, Any] = {
        "source": ds.source, "rows": len(ds), "first_step": first, "last_step": last,
        "train_steps": [first, split.pivot_1 - 1],
        "validation_steps": [split.pivot_1, split.pivot_2 - 1],
        "held_out_from": split.pivot_2, "epoch_ms": epoch_ms,
        "first_time": iso(first), "train_until_time": iso(split.pivot_1 - 1),
        "last_time": iso(last),
    }
    data |= period or {}
    kept = warm.index.n_items if warm else 0
    return {
        "parent": warm.version if warm else None,
        "parent_checkpoint": str(warm.path) if warm else None,
        "warm_start": {"init": grow_init} if warm else None,
        "vocabulary": {"kept": kept, "added": index.n_items - kept},
        "data": data,
    }


def _adam(model: SeqRec, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam, fused where torch has a fused CPU kernel (2.4 on): the same update, one pass
    over each parameter instead of a dozen whole-tensor operations with temporaries (the
    item embedding is most of the parameters and takes a dense gradient every step)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # torch without the fused CPU kernel
        return torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)


def _deadline(cfg: TrainConfig) -> float:
    return time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes > 0 else 0.0


def _validation_targets(ds: Interactions, split: Any, window_len: int, cfg: TrainConfig,
                        live: Availability) -> list[EvalTarget]:
    """The evenly spaced ``cfg.val_targets`` of the validation period's targets: the ones
    `iter_targets` yields (every watch in the period, timeline order), built for the kept
    rows only (`_targets_at`) instead of walking the whole log's timeline."""
    lo, hi = period(split, "validation")
    rows = _target_rows(ds, lo, hi)
    if rows.shape[0] > cfg.val_targets:
        rows = rows[np.linspace(0, rows.shape[0] - 1, cfg.val_targets).astype(np.int64)]
    if not rows.shape[0]:
        raise ValueError(f"{ds.source}: no validation targets in steps [{lo}, {hi}]")
    return _targets_at(ds, rows, window_len, live)


def _target_rows(ds: Interactions, lo: int, hi: int) -> np.ndarray:
    """Rows starting in ``[lo, hi]`` in timeline order (step, then row): `iter_targets`'s
    order with ``targets="all"``."""
    rows = np.flatnonzero((ds.start >= lo) & (ds.start <= hi))
    return rows[np.argsort(ds.start[rows], kind="stable")]


def _targets_at(ds: Interactions, rows: np.ndarray, window_len: int, live: Availability,
                repeat_window: int = REPEAT_WINDOW) -> list[EvalTarget]:
    """`iter_targets`' target for each of ``rows``, from each user's watches in timeline
    order: the request comes before its own watch and after every watch of an earlier step,
    or of the same step and an earlier row."""
    n = len(ds)
    timeline = np.argsort(ds.start, kind="stable")  # the watches in timeline order
    by_user = timeline[np.argsort(ds.user[timeline], kind="stable")]  # per user, in order
    rank = np.empty(n, dtype=np.int64)
    rank[by_user] = np.arange(n)
    user_first = np.searchsorted(ds.user[by_user], ds.user[rows], side="left")
    keep = max(window_len, repeat_window, 1)
    names, streamer, start = ds.streamer_names, ds.streamer, ds.start
    cands: dict[int, tuple[str, ...]] = {}
    out: list[EvalTarget] = []
    for row, first in zip(rows.tolist(), user_first.tolist(), strict=True):
        k = int(rank[row])
        history = streamer[by_user[first:k]]
        recent = by_user[max(first, k - keep) : k]
        window_rows = recent[-window_len:] if window_len > 0 else recent[:0]
        window = tuple(zip(names[streamer[window_rows]].tolist(),
                           start[window_rows].tolist(), strict=True))
        step = int(start[row])
        at = cands.get(step)
        if at is None:
            at = cands[step] = tuple(names[live.streamers_at(step)].tolist())
        key = streamer[row]
        out.append(EvalTarget(f"req:{row}", RankRequest(window, step, at), str(names[key]),
                              bool((history == key).any()),
                              bool((streamer[recent[-repeat_window:]] == key).any())))
    return out


def _epoch(model: SeqRec, opt: torch.optim.Optimizer, batcher: Batcher, n: int,
           cfg: TrainConfig, rng: np.random.Generator, epoch: int, progress: bool
           ) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    model.train()
    perm = rng.permutation(n)
    n_batches = math.ceil(n / cfg.batch_size)
    total, t0 = 0.0, time.perf_counter()
    bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f} "
                              "{task.fields[rate]:.0f} seq/s"),
                   TimeRemainingColumn(), disable=not progress, transient=True)
    with bar:
        task = bar.add_task("train", total=n_batches, epoch=epoch, loss=0.0, rate=0.0)
        for i in range(n_batches):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = batch_loss(model, batcher(idx, rng), cfg.loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            done = min((i + 1) * cfg.batch_size, n)
            bar.update(task, advance=1, loss=total / (i + 1),
                       rate=done / (time.perf_counter() - t0))
    seconds = time.perf_counter() - t0
    return {"loss": total / max(n_batches, 1), "seconds": seconds,
            "sequences_per_s": n / seconds}


def _meta(ds: Interactions, model_cfg: ModelConfig, cfg: TrainConfig, index: ItemIndex,
          enc: TimeEncoding, split: Any, version: str, history: list[dict[str, Any]],
          metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT, "version": version, "model": model_cfg.to_json(),
        "train": asdict(cfg), "time_encoding": enc.to_json(),
        "items": list(index.names), "popularity": index.counts.tolist(),
        "data": {"source": ds.source, "rows": len(ds), "split": asdict(split)},
        "history": list(history), "validation": metrics,
    }


def _update_history(out: Path, history: list[dict[str, Any]]) -> None:
    path = out / "checkpoint.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["history"] = history
    path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
