# Set-up commands that work on a fresh machine. TORCH picks the torch build:
# the default takes the CPU wheel (from local disk on the project machines); `make demo TORCH=torch` opts into CUDA.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
IMAGE ?= ../shared/datasets/kodak/kodim23.png

.PHONY: install test demo bench clean

$(BIN)/vaecodec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,bench]"
	touch $@

install: $(BIN)/vaecodec

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python -m vaecodec_cli.demo "$(IMAGE)"

bench: install
	$(BIN)/python -m benchmarks.rd --data ../shared/datasets/kodak
	$(BIN)/python -m benchmarks.refine --data ../shared/datasets/kodak   # ~35 min on 2 cores
	$(BIN)/python -m benchmarks.speed --data ../shared/datasets/kodak
	$(BIN)/python -m benchmarks.ceiling --data ../shared/datasets/train
	$(BIN)/python -m benchmarks.rounds
	$(BIN)/python -m benchmarks.model_card
	$(BIN)/python -m benchmarks.readme

clean:
	rm -rf $(VENV) build *.egg-info
