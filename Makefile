# make report [PROFILE=quick]  — install, fetch data, run every experiment, write figures/results
#                                and REPORT.md
# make test                    — the test suite (what CI runs)
# make bench                   — throughput benchmarks (installs the `bench` extra: PyTorch)
# ARGS='--output_dir=/tmp/x'   — extra flags for every experiment binary of `make report`
PROFILE ?= full
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Experiments in the order they run; each reads flags/$(PROFILE)/<name>.flags.
EXPERIMENTS ?= simulate_function actual_task scratch

.PHONY: install data report test bench figures clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

data: install
	$(PY) bin/fetch_data --datasets=mnist,fashion_mnist
	-$(PY) bin/fetch_data --dataset=cifar10

report: data
	@set -e; for e in $(EXPERIMENTS); do \
	  if [ -f flags/$(PROFILE)/$$e.flags ]; then \
	    echo "== $$e ($(PROFILE))"; \
	    $(PY) bin/run_$$e --flagfile=flags/$(PROFILE)/$$e.flags $(ARGS); \
	  fi; \
	done
	$(PY) bin/make_report --profile=$(PROFILE) $(ARGS)

figures: install
	$(PY) bin/make_figures --experiment=$(shell echo $(EXPERIMENTS) | tr ' ' ',') $(ARGS)

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/train_throughput.py

clean:
	rm -rf results/*/ figures/*/ saved_models/*/
