# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs what it needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml setup.py src/dynadnn/runtime/_native.c Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	# animal-mnist's metadata pulls tensorflow and ofa's pulls torchvision: neither is needed, so --no-deps.
	$(PY) -m pip install -q --no-deps animal-mnist==0.4 ofa==0.1.0.post202307202001
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dynadnn demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	# the runtime on the pure-Python references (runtime/native.py): the fallback when C is not built
	DYNADNN_NATIVE=0 $(PY) -m pytest -q -p no:cacheprovider tests/test_runtime_*.py
	# everything, on the C path when it is built
	$(PY) -m pytest -q

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
