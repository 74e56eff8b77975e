# The two commands a newcomer runs: `make bench` and `make test`. Each sets itself up on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BENCH := $(VENV)/bin/bench
# re-install whenever pyproject.toml changes
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

METHOD ?=
TASK ?=
SUITE ?= smoke
SEED ?= 0
DATA ?=
BACKEND ?= local
DATA_FLAG := $(if $(DATA),--data $(DATA),)
# docker backend: method Dockerfiles are built FROM this base (BASE= for their own default, a CUDA image)
BASE ?= vrbench/base:bookworm
# outside CI a service that cannot start is reported and its tests skip; under CI=true it fails the run
OR_SKIP = || { [ "$${CI:-}" != true ] && echo "==> $@ unavailable: the tests that need it will skip" >&2; }

.PHONY: setup test test-fast lint bench bench-deps leaderboard schema clean services base-image browser slurm

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) (first run: downloads PyTorch, about 2 minutes)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

test: setup lint services base-image browser slurm
	$(VENV)/bin/python -m pytest

# the inner loop: lint, then every test that needs no service and takes under a minute (no root needed)
test-fast: setup lint
	$(VENV)/bin/python -m pytest -m "not docker and not slurm and not slow"

# what the benchmark and comparison scripts under scripts/ need beyond the harness (pyproject's `bench` extra)
bench-deps: setup
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'

# ruff (lint + format check), import-linter's layer contracts (pyproject.toml), actionlint over .github/workflows
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/actionlint

# dockerd and a local registry on 127.0.0.1:5000 (installs docker.io, docker-registry, debootstrap if missing)
services:
	@scripts/services.sh $(OR_SKIP)

# a single-node Slurm cluster: munged, slurmctld, slurmd (installs munge and slurm-wlm's daemons if missing)
slurm:
	@scripts/slurm.sh $(OR_SKIP)

# Debian's chromium, headless, for the leaderboard page's browser test (installs it if missing)
browser:
	@scripts/browser.sh $(OR_SKIP)

# vrbench/base:bookworm, the local CPU base image (debootstrap + docker import; skipped when up to date)
base-image: services
	@scripts/build_base_image.sh $(OR_SKIP)

# make bench                          -> the smoke suite on procedural data, then the leaderboard
# make bench METHOD=m TASK=t [DATA=synthetic] [SEED=0] [BACKEND=local]
# make bench SUITE=s [DATA=synthetic]
# BACKEND=docker runs each method as a sandboxed image, built FROM $(BASE) (exported as BENCH_BASE_IMAGE)
bench: export BENCH_BASE_IMAGE = $(BASE)
bench: setup $(if $(filter docker,$(BACKEND)),services base-image)
ifneq ($(METHOD)$(TASK),)
	$(BENCH) run --method $(METHOD) --task $(TASK) --seed $(SEED) --backend $(BACKEND) $(DATA_FLAG)
else
	@status=0; $(BENCH) matrix --suite $(SUITE) --backend $(BACKEND) $(DATA_FLAG) || status=$$?; \
	$(BENCH) leaderboard || status=$$?; exit $$status
endif

leaderboard: setup
	$(BENCH) leaderboard

schema: setup
	$(BENCH) schema --out leaderboard/result.schema.json

clean:
	rm -rf $(VENV) .pytest_cache
