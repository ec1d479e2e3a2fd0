# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both bootstrap a fresh machine: a project-local virtualenv with leadstream installed editable,
# then the real local services (Kafka from Maven Central jars, Debian's redis-server).
# Debian's python3.11 is built with profile-guided optimisation and a static libpython, which
# runs the scoring engine about a quarter faster than a plain source build (pyenv's, with
# --enable-shared); it is used when it can make a virtualenv, else the python3.11 on PATH.
PYTHON ?= $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null && echo /usr/bin/python3.11 || echo python3.11)
VENV := .venv
BIN := $(VENV)/bin

.DEFAULT_GOAL := test
.PHONY: demo test bootstrap services-up services-down clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is missing: install Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

bootstrap: $(VENV)/.installed

services-up: bootstrap
	$(BIN)/leadstream services up

services-down:
	$(BIN)/leadstream services down

demo: services-up
	$(BIN)/leadstream demo

test: services-up
	$(BIN)/pytest $(PYTEST_ARGS)

clean: services-down
	rm -rf .services $(VENV)
