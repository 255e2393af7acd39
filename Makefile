# make report [PROFILE=quick]  — install, fetch data, run every experiment of the registry
#                                (hw1_tf/experiments) with flags/$(PROFILE)/, write REPORT.md
# make test                    — the test suite (what CI runs)
# make bench                   — throughput benchmarks (installs the `bench` extra: PyTorch)
# make figures / make report-only — redraw figures / rewrite REPORT.md from results, no training
# make bin                    — write bin/run_<name> for every experiment module (from the registry)
# ARGS='--output_dir=/tmp/x'   — flags of bin/run_all (--output_dir, --experiments,
#                                --extra_flags='...' for every experiment binary)
PROFILE ?= full
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install data report report-only test bench figures bin clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

data: install
	$(PY) bin/fetch_data --datasets=mnist,fashion_mnist
	-$(PY) bin/fetch_data --datasets=cifar10

report: data
	$(PY) bin/run_all --profile=$(PROFILE) $(ARGS)

report-only: install
	$(PY) bin/make_report $(ARGS)

figures: install
	$(PY) bin/make_figures --skip_missing $(ARGS)

test: install
	$(PY) -m pytest

bin: install
	$(PY) bin/make_binaries

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/train_throughput.py

clean:
	rm -rf results/*/ figures/*/ saved_models/*/
