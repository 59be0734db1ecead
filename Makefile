# One entry point for every task. Each target builds .venv from pyproject.toml,
# so a fresh clone needs nothing installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint bench bench-scale bench-lifecycle clean vectors fuzz chromium

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,all]'
	@# an editable install is not byte-compiled (a wheel install is): compile once, so every
	@# command starts from bytecode even where PYTHONDONTWRITEBYTECODE is set (start-up, issue 14)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m compileall -q capsule cli > /dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/week_demo.py
	bash examples/demo.sh $(BIN)

# Headless chromium (Debian's package) for tests/test_report.py; a no-op when already there.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium; }

# Two workers, a test file each at a time (files share fixtures and temp folders): the 2-core CI
# box runs the suite in about half the time.
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

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
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/fit_fusion.py
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/langgraph_bench.py

# The scale table; 1M only when asked: make bench-scale SCALE_SIZES=10k,100k,1M
SCALE_SIZES ?= 10k,100k
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --sizes $(SCALE_SIZES)

# Forget / expire / supersede / redact most of a capsule, then compact it (issue 10);
# 1M only when asked: make bench-lifecycle LIFECYCLE_RECORDS=1M
LIFECYCLE_RECORDS ?= 100k
bench-lifecycle: $(STAMP)
	$(BIN)/python benchmarks/lifecycle.py --records $(LIFECYCLE_RECORDS)

# Coverage-guided fuzzing (atheris, from the dev extra; Linux only), FUZZ_SECONDS per target.
# The writable corpus and any crash input go to build/fuzz/; a crash, a timeout or a
# run out of memory fails the target, and the run fails if any target did.
# Replay one input: $(BIN)/python tests/fuzz/fuzz_TARGET.py FILE
FUZZ_SECONDS ?= 120
FUZZ_TARGETS ?= frames canonical jsonl open_verify vindex
FUZZ_FLAGS ?= -timeout=30 -rss_limit_mb=2048 -print_final_stats=1

fuzz: $(STAMP)
	@$(BIN)/python -c 'import atheris' 2>/dev/null || { echo "make fuzz needs atheris: the dev extra, Linux only"; exit 1; }
	@failed=""; for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus/$$t build/fuzz/crashes/$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  $(BIN)/python tests/fuzz/fuzz_$$t.py build/fuzz/corpus/$$t -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=build/fuzz/crashes/$$t/ $(FUZZ_FLAGS) || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failures in:$$failed (inputs in build/fuzz/crashes/)"; exit 1; fi

vectors: $(STAMP)
	$(BIN)/python spec/vectors/make_vectors.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
