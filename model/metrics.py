"""Ranking metrics of the LiveRec protocol from the true item's full rank among live items.

A rank is 1-based; a target missing from the candidates counts as rank infinity (a miss
everywhere, 0 reciprocal rank). HR@k = share of targets with rank <= k; NDCG@k with one
relevant item = 1 / log2(rank + 1) when rank <= k, else 0; MRR = mean 1 / rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KS = (1, 5, 10)
METRICS = tuple(f"HR@{k}" for k in KS) + tuple(f"NDCG@{k}" for k in KS) + ("MRR",)


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """HR@1/5/10, NDCG@1/5/10 and MRR of 1-based ranks (inf = not ranked); ``n`` counts."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {"n": float(r.shape[0])}
    if r.shape[0] == 0:
        return out | {m: float("nan") for m in METRICS}
    for k in KS:
        out[f"HR@{k}"] = float(np.mean(r <= k))
    for k in KS:
        gain = np.where(r <= k, 1.0 / np.log2(np.minimum(r, 1e12) + 1.0), 0.0)
        out[f"NDCG@{k}"] = float(np.mean(gain))
    out["MRR"] = float(np.mean(1.0 / r))
    return out


@dataclass
class Accumulator:
    """Collects ranks per target, split into new (never watched by the user before) and
    repeat targets."""

    ranks: list[float] = field(default_factory=list)
    repeats: list[bool] = field(default_factory=list)

    def add(self, rank: int | None, repeat: bool) -> None:
        self.ranks.append(float("inf") if rank is None else float(rank))
        self.repeats.append(repeat)

    def result(self) -> dict[str, object]:
        r = np.asarray(self.ranks, dtype=np.float64)
        rep = np.asarray(self.repeats, dtype=bool)
        return {
            "all": ranking_metrics(r),
            "new": ranking_metrics(r[~rep]),
            "repeat": ranking_metrics(r[rep]),
            "repeat_ratio": float(rep.mean()) if rep.size else float("nan"),
            "unranked": int(np.count_nonzero(np.isinf(r))),
        }
