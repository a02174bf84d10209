# The targets the README names. Everything heavy is cached outside the clone
# (MEDSHARE_CACHE_DIR, default ~/.cache/medshare) so a second run builds nothing.
SHELL := /bin/bash
export MEDSHARE_CACHE_DIR ?= $(HOME)/.cache/medshare
VENV := $(MEDSHARE_CACHE_DIR)/venv
MEDSHARE := $(VENV)/bin/medshare
PYTEST := $(VENV)/bin/python -m pytest
PYTEST_ARGS ?=

.PHONY: help venv setup up down status demo test test-unit test-integration test-faults lint typecheck clean-state

help:
	@echo "make demo   - set up everything, start the stack and run the platform end to end"
	@echo "make test   - set up everything and run all tests against real MinIO, Kafka and Spark"
	@echo "make down   - stop the services this project started"
	@echo "other: setup up status test-unit test-integration test-faults lint typecheck clean-state"

venv:
	@bash infra/bootstrap.sh

setup: venv
	@$(MEDSHARE) setup

up: setup
	@$(MEDSHARE) up

down:
	@if [ -x $(MEDSHARE) ]; then $(MEDSHARE) down; else echo "nothing installed, nothing to stop"; fi

status: venv
	@$(MEDSHARE) status

demo: up
	@$(MEDSHARE) demo $(if $(CITIES),--cities $(CITIES))

test: setup lint typecheck
	$(PYTEST) $(PYTEST_ARGS)

test-unit: venv
	$(PYTEST) -m "not integration" $(PYTEST_ARGS)

test-integration: setup
	$(PYTEST) -m integration $(PYTEST_ARGS)

# The replication fault tests, each repeated with a new random kill point (make test runs them once).
FAULT_REPEATS ?= 5
test-faults: setup
	MEDSHARE_FAULT_REPEATS=$(FAULT_REPEATS) $(PYTEST) -m faults $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

clean-state: down
	$(MEDSHARE) clean-state
