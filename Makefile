PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

# The venv is built once and re-installed only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raynlp demo

# The whole suite (what CI runs), in two processes: each test file runs in one of them, on that process's own
# session cluster; most of a Ray test's time is process start-up and waiting, which the other process fills.
# Files go out in collection order, slow ones first (conftest.py), so that quick ones fill the end.
PYTEST_2 := $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST_2)

# Unit and co-located tests: no Ray Train run, Serve app, Ray job, benchmark or demo; in two processes, as above.
test-fast: $(STAMP)
	$(PYTEST_2) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check raynlp tests jobs conftest.py

clean:
	rm -rf $(VENV) runs .pytest_cache
