# Everything runs from the project's own venv, which `make` builds from requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned: lint results must not change under us.  Fetched from npm, not buf's registry.
BUF := npx --yes @bufbuild/buf@1.75.0

.PHONY: venv test cluster gen lint

venv: $(VENV)/.installed

# Rebuilt whenever requirements.txt changes; the stamp marks a completed install.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

test: venv
	$(PY) -m pytest

cluster: venv
	$(PY) -m server.cluster

gen: venv
	$(PY) scripts/gen_protos.py

lint:
	$(BUF) lint
