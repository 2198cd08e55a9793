# One-command set-up: `make test` and `make demo` create .venv, install the pinned CPU stack,
# build the native extension (incrementally), then run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed

.PHONY: setup build test demo bench clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

build: setup
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m pytest -q --durations=15 tests

demo: build
	$(PY) examples/demo.py

bench: build
	$(PY) bench/bench_fused_unmask.py

clean:
	rm -rf build dllm_kernels/*.so
