# The command-line contract: make setup | demo | test | bench (see README.md).
# Everything runs through .venv/bin/autodice, which needs nothing sourced.
SHELL := /bin/bash
AUTODICE := .venv/bin/autodice
# Tests, demo and benchmarks keep all DDS traffic on this machine; robots keep the ROS default.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint clean

setup:
	@bash tools/setup.sh

demo: setup
	$(AUTODICE) demo

test: setup
	$(AUTODICE) env -- python -m pytest $(PYTEST_ARGS) test

lint: setup
	$(AUTODICE) env -- python -m pytest -q test/test_lint.py

bench: setup
	$(AUTODICE) bench all --short -o bench-results

clean:
	rm -rf build install log .venv bench-results out
