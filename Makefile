# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelkiln-installed
OUT ?= out/minilm-cpu

.PHONY: install demo test test-all lint typecheck bench clean

# torch==2.13.0 first: it is the CPU build on local disk; a bare `torch` requirement would
# otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[export,samples,dev,bench,openvino,serve]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/kiln export "$$($(BIN)/python samples/minilm/checkpoint.py)" -o $(OUT) --force
	$(BIN)/kiln validate $(OUT)
	$(BIN)/python samples/embed_app.py $(OUT)

test: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# mypy cannot follow the editable install's import hook, so check a copy laid out as installed.
typecheck: install
	rm -rf build/typecheck && mkdir -p build/typecheck
	cp -r modelkiln build/typecheck/modelkiln
	cp -r exporter build/typecheck/modelkiln/exporter
	cp -r backends build/typecheck/modelkiln/backends
	cp -r targets build/typecheck/modelkiln/targets
	cd build/typecheck && ../../$(BIN)/mypy -p modelkiln

bench: install
	$(BIN)/python benchmarks/export_time.py

clean:
	rm -rf out build dist *.egg-info
