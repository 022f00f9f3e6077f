# One command for people and CI. Every target creates/updates the venv first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check bench fmt browser-deps pgbouncer-deps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The demo is served by taskrt's own CLI (`python -m demo` does the same with
# --speed/--db options): http://127.0.0.1:8000, jobs in demo.db.
# `make demo PORT=8001 HOST=0.0.0.0` serves it elsewhere.
HOST ?= 127.0.0.1
PORT ?= 8000
demo: $(STAMP)
	@echo "taskrt demo: http://$(HOST):$(PORT)/  (dashboard: /dashboard; jobs in demo.db; Ctrl-C stops)"
	$(VENV)/bin/taskrt serve demo.app:app --host $(HOST) --port $(PORT)

check: $(STAMP)
	$(VENV)/bin/ruff check taskrt tests bench demo
	$(VENV)/bin/ruff format --check taskrt tests bench demo
	$(VENV)/bin/mypy
	# The layering: imports point down, no cycle, SQL only in the store, the CLI one way.
	$(PY) -m pytest -q tests/test_layers.py tests/test_cli_layout.py

browser-deps:
	@bash scripts/browser-deps.sh

pgbouncer-deps:
	@bash scripts/pgbouncer-deps.sh

test: $(STAMP) check browser-deps pgbouncer-deps
	PYTHONASYNCIODEBUG=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

fmt: $(STAMP)
	$(VENV)/bin/ruff format taskrt tests bench demo
	$(VENV)/bin/ruff check --fix taskrt tests bench demo

clean:
	rm -rf $(VENV) build *.egg-info
