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

import json
import sys
from pathlib import Path

import numpy as np

from liverank.cli.bench_scorer import export_random_model


def main(out: Path, blocks: int) -> None:
    meta = json.loads(Path("out/bench-work/random-model/model.json").read_text())
    counts = np.asarray(meta["popularity"], dtype=np.int64)
    export_random_model(tuple(meta["items"]), counts, out, blocks=blocks)
    print(json.loads((out / "model.json").read_text())["config"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
