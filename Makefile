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

.PHONY: setup test bench leaderboard schema clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) (first run: downloads PyTorch, about 2 minutes)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

test: setup
	$(VENV)/bin/python -m pytest

# make bench                          -> the smoke suite on procedural data, then the leaderboard
# make bench METHOD=m TASK=t [DATA=synthetic] [SEED=0] [BACKEND=local]
# make bench SUITE=s [DATA=synthetic]
bench: setup
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
