#!/usr/bin/env bash
# The window cache's A/B (docs/results.md, session 15): latency runs with the GC probe,
# alternating the commit before d98ef47 (lists of tracked entries) and d98ef47 (tuples of
# untracked entries) by swapping services/state.py in the working tree; restores it at the
# end. Usage: bash docs/measure/gc_windows_ab.sh OUT [ROUNDS]
set -euo pipefail
out=$1; rounds=${2:-2}
mkdir -p "$out"
cp services/state.py "$out/state.new.py"
git show d98ef47~1:services/state.py > "$out/state.old.py"
trap 'cp "$out/state.new.py" services/state.py' EXIT
for r in $(seq "$rounds"); do
  for v in old new; do
    cp "$out/state.$v.py" services/state.py
    env_json="{\"env\": {\"PYTHONPATH\": \"$PWD/docs/measure/gc_probe\", \"GC_PROBE_OUT\": \"$PWD/$out/gc-$r-$v.log\"}}"
    python docs/measure/latency_ticks.py "${RATE:-1920}" "$out/$r-$v" "$env_json" | tee "$out/$r-$v.json"
  done
done
