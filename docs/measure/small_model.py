"""A random liverank model like `liverank bench service`'s but with other shapes, exported
over the same item index: what a cheaper model run would do to a paced worker's tail.

    python docs/measure/small_model.py OUT [BLOCKS]
    python docs/measure/latency_ticks.py 3000 OUT/ticks '{}' '{"model": "OUT"}'

``BLOCKS`` attention blocks (default 1; the bench's model has 2), everything else as
`liverank.cli.bench_scorer.export_random_model` makes it, over the streamers of the model in
``out/bench-work/random-model`` (docs/results.md, session 26). Not a model to serve: it is
untrained, like the bench's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from liverank.cli import bench_scorer
from liverank.model import sasrec


def main(out: Path, n_blocks: int) -> None:
    meta = json.loads(Path("out/bench-work/random-model/model.json").read_text())
    names = tuple(meta["items"])
    counts = np.asarray(meta["popularity"], dtype=np.int64)
    config = sasrec.ModelConfig

    @dataclasses.dataclass(frozen=True)
    class Smaller(config):  # type: ignore[valid-type,misc]
        blocks: int = n_blocks

    sasrec.ModelConfig = Smaller  # type: ignore[misc]  # what `_random_checkpoint` makes
    try:
        bench_scorer.export_random_model(names, counts, out)
    finally:
        sasrec.ModelConfig = config  # type: ignore[misc]
    print(json.loads((out / "model.json").read_text())["config"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
