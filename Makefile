# One entry point for every task. Each target builds .venv from pyproject.toml,
# so a fresh clone needs nothing installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint bench clean vectors

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/week_demo.py
	bash examples/demo.sh $(BIN)

test: $(STAMP)
	$(BIN)/python -m pytest -q

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -o addopts=''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/store.py
	$(BIN)/python benchmarks/checkpoints.py
	$(BIN)/python benchmarks/actions.py
	$(BIN)/python benchmarks/search.py

vectors: $(STAMP)
	$(BIN)/python spec/vectors/make_vectors.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
