# liverank: `make demo` runs the replay simulation end to end, `make test` runs the tests.
# Both set up .venv first (once, through a stamp file), so each works alone on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-setup

.PHONY: setup test test-all lint demo bench bench-e2e soak clean

setup: $(STAMP)

# Everything from the lock files the images install from too (deploy/requirements/, made
# by its lock.sh; docs/deploy.md), each package checked against its hashes: pip, setuptools
# and wheel first, then torch, pinned: torch==2.13.0 is a CPU wheel on these machines; a
# looser spec would pull a multi-GB CUDA build (dev.txt pins that CPU build and its
# dependencies); then the rest and liverank itself. checkov, for `make test`'s policy
# check, gets an environment of its own: its pins clash with torch's.
LOCKS   := deploy/requirements
CHECKOV := $(VENV)/tools/checkov

$(STAMP): pyproject.toml $(LOCKS)/build.txt $(LOCKS)/dev.txt $(LOCKS)/checkov.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r $(LOCKS)/build.txt
	$(BIN)/pip install -q --no-deps torch==2.13.0
	$(BIN)/pip install -q --require-hashes -r $(LOCKS)/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install -q --require-hashes -r $(LOCKS)/checkov.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -m "not slow"

test-all: $(STAMP)
	$(BIN)/pytest

# The folders that make up the liverank namespace (pyproject's package-dir).
PACKAGES  := core broker model replay services client cli
TYPECHECK := build/typecheck

# ruff, mypy, and import-linter's contracts in pyproject.toml (docs/architecture.md).
# mypy reads the packages under their installed names (liverank.core, ...) through a tree
# of links, so imports across packages are checked, not taken as Any.
lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/liverank
	for p in $(PACKAGES); do ln -s ../../../$$p $(TYPECHECK)/liverank/$$p; done
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy -p liverank --namespace-packages --explicit-package-bases
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/liverank demo

bench: $(STAMP)
	$(BIN)/liverank bench all --out out/bench.json

# One worker at 80% of its measured maximum on the `medium` log for 10 minutes (2 partitions,
# the log's first days looped so every user is seen in the first third): RSS, lag, p99 and
# the live index every 5 s (out/soak/soak.csv, soak.png, summary.json); docs/reliability.md.
soak: $(STAMP)
	$(BIN)/liverank bench soak --scale medium --minutes 10 --rate-share 0.8 --out out/soak

# The whole pipeline on the whole twitch100k log, a request before every watch: wall time
# from the replay's start to the last answer, unanswered (must be 0), answers/s, RSS and lag
# every 10 s (out/e2e-<N>w/e2e.csv, e2e.png, summary.json). WORKERS=2 (the default, the
# faster on 2 cores): two workers in one consumer group; WORKERS=1 for one. Generates
# out/data/twitch100k.csv when missing. Long: ~13 min with two workers on 2 cores, ~16 with
# one (docs/results.md).
WORKERS ?= 2
bench-e2e: $(STAMP)
	$(BIN)/liverank bench e2e --scale twitch100k --workers $(WORKERS) --out out/e2e-$(WORKERS)w

clean:
	rm -rf out build *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache \
	       .hypothesis .coverage htmlcov
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
