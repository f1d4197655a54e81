# Two commands for a newcomer: `make run` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: setup run test lint bench
setup: $(VENV)/.installed

# The pinned CPU torch goes in first: a bare `torch` requirement would pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The main job: the live server with the shipped default model; open http://127.0.0.1:8080/
run: setup
	$(BIN)/python server.py --host 127.0.0.1 --port 8080

# Tests run in a private network namespace with only loopback, so nothing can leave this
# machine; where namespaces are unavailable they run as they are.
LOOPBACK_ONLY := $(shell unshare -n true 2>/dev/null && echo "unshare -n sh -c 'ip link set lo up && exec \"\$$@\"' sh")

test: setup
	$(BIN)/ruff check .
	$(LOOPBACK_ONLY) $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/render.py --out benchmarks/results
