# liverank: `make demo` runs the replay simulation end to end, `make test` runs the tests.
# Both set up .venv first (once, through a stamp file), so each works alone on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-setup

.PHONY: setup test test-all lint demo bench soak clean

setup: $(STAMP)

# torch first, pinned: torch==2.13.0 is a CPU wheel on these machines; a looser spec would
# pull a multi-GB CUDA build through the `train` extra.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
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

# One worker at 80% of its measured maximum on the `medium` log for 10 minutes: RSS, lag,
# p99 and the live index every 5 s (out/soak/soak.csv, soak.png, summary.json).
soak: $(STAMP)
	$(BIN)/liverank bench soak --scale medium --minutes 10 --rate-share 0.8 --out out/soak

clean:
	rm -rf out build *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache \
	       .hypothesis .coverage htmlcov
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
