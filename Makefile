# Everyday entry points. Each target runs through uv so the locked venv is used.
#
# Fallback when uv is missing: it is installed with `python3 -m pip install uv`
# (PyPI is reachable everywhere this project runs; no curl-piped installers).
# (a system Python that refuses with "externally managed" gets a --user install).
# pip may put it in a bin dir that is not on PATH (e.g. ~/.local/bin), so the
# uv used below is looked up again after installing.

.DEFAULT_GOAL := help
SHELL := /bin/bash

UV_SEARCH = command -v uv 2>/dev/null || for d in "$$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" "$$HOME/.local/bin"; do [ -x "$$d/uv" ] && echo "$$d/uv" && break; done
UV := $(shell $(UV_SEARCH))
ifeq ($(UV),)
# Deferred: looked up again, after the uv target may have installed it.
UV = $(or $(shell $(UV_SEARCH)),uv)
endif

.PHONY: help uv venv run test lint fmt bench faults clean

help:
	@echo "make run    start the whole system (embedded services if none answer)"
	@echo "make test   run the full test suite"
	@echo "make lint   ruff, ruff format --check, mypy, import-linter"
	@echo "make fmt    apply ruff fixes and formatting"
	@echo "make bench  run the benchmarks (bench/)"
	@echo "make faults the long fault suite: kills and restarts under load (FAULTS_ARGS)"
	@echo "make clean  remove var/ (embedded service data)"

uv:
	@[ -n "$$($(UV_SEARCH))" ] || { \
		echo "uv not found; installing it with: python3 -m pip install uv"; \
		python3 -m pip install --quiet uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv; }

venv: uv
	@if [ -f uv.lock ]; then "$(UV)" sync --frozen; else "$(UV)" sync; fi

run: venv
	"$(UV)" run chirp up

test: venv
	"$(UV)" run pytest

lint: uv
	"$(UV)" run ruff check .
	"$(UV)" run ruff format --check .
	"$(UV)" run mypy
	"$(UV)" run lint-imports

fmt: uv
	"$(UV)" run ruff check --fix .
	"$(UV)" run ruff format .

bench: uv
	@if [ -f bench/__main__.py ]; then \
		"$(UV)" run --group bench python -m bench $(BENCH_ARGS); \
	else \
		echo "no benchmarks exist yet (bench/__main__.py is missing)"; \
	fi

# The long fault suite (tests/faults): 10 minutes of load while processes are killed and
# services restarted, then the invariants. FAULTS_ARGS="--duration 300 --seed 3" etc.;
# `uv run python -m tests.faults --help` lists them. A short version runs in `make test`.
faults: venv
	"$(UV)" run python -m tests.faults $(FAULTS_ARGS)

clean:
	rm -rf var
