"""An experiment, never a setting: on ``PYTHONPATH`` with ``NOSEAL=1``, a worker writes no
changelog seals (`liverank.services.app._TableView.seals` returns nothing), to measure
what the seals cost (recovery is then not exact on tansu: measurement only).

    python docs/measure/drain_variants.py OUT '{}' \\
        '{"env": {"PYTHONPATH": "docs/measure/noseal", "NOSEAL": "1"}}'
"""

import os

if os.environ.get("NOSEAL") == "1":
    from liverank.services import app

    app._TableView.seals = lambda self, partitions: []  # type: ignore[method-assign]
