#!/usr/bin/env bash
# Old vs new code, alternating: FILES as at REV ("old") and as in the working tree ("new"),
# swapped in the working tree before each run of a measure script (a worker imports the
# code when it starts) and restored at the end.
#   bash docs/measure/code_ab.sh OUT REV "FILE ..." ROUNDS SCRIPT [ARGS ...]
# SCRIPT runs as `python SCRIPT [RATE] OUT/<round>-<old|new> ARGS...`: RATE (the env var)
# comes first when set, for latency_ticks.py. Example (docs/results.md, session 16):
#   bash docs/measure/code_ab.sh out/ab 9e6981f~1 "model/scorer.py model/data/live.py \
#       services/state.py" 2 docs/measure/drain_variants.py '{}'
set -euo pipefail
out=$1; rev=$2; files=$3; rounds=$4; script=$5; shift 5
mkdir -p "$out/new-files"
for f in $files; do mkdir -p "$out/new-files/$(dirname "$f")"; cp "$f" "$out/new-files/$f"; done
restore() { for f in $files; do cp "$out/new-files/$f" "$f"; done; }
trap restore EXIT
for r in $(seq "$rounds"); do
  for v in old new; do
    if [ "$v" = old ]; then for f in $files; do git show "$rev:$f" > "$f"; done; else restore; fi
    python "$script" ${RATE:+"$RATE"} "$out/$r-$v" "$@" | sed "s/^/{\"code\": \"$v\", \"round\": $r, \"run\": /; s/\$/}/" | tee -a "$out/runs.jsonl"
  done
done
