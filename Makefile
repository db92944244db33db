# Set-up commands that work on a fresh machine. TORCH picks the torch build:
# the default takes the CPU wheel (from local disk on the project machines); `make demo TORCH=torch` opts into CUDA.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
IMAGE ?= ../shared/datasets/kodak/kodim23.png

# The long training run: a folder outside the checkout, resumed by the same command after any interruption
# (or started from the shipped weights where the folder is gone), in the background at low priority.
RUN ?= ../runs/cb64
TRAIN_OPTIONS ?= --init default --latent-codec channel-checkerboard --gray-fraction 0.05 \
	--patch 256 --batch 8 --lr 5e-5 --clip-norm 100 --adam-epsilon 5.886e-6 \
	--average-steps 1000 --steps 1000000 --decay-at 1

.PHONY: install test demo bench clean train train-stop

$(BIN)/vaecodec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	@# setuptools warns that an editable install of this layout (cli/ is vaecodec_cli) goes through an import
	@# hook; that is intended, and the warning would be the only output of a clean install.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e ".[test,bench,ray]"
	touch $@

install: $(BIN)/vaecodec

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python -m vaecodec_cli.demo "$(IMAGE)"

bench: install
	$(BIN)/python -m benchmarks.rd --data ../shared/datasets/kodak
	$(BIN)/python -m benchmarks.refine --data ../shared/datasets/kodak   # about an hour on 2 cores
	$(BIN)/python -m benchmarks.speed --data ../shared/datasets/kodak
	$(BIN)/python -m benchmarks.cli_speed   # whole-process command times beside WebP
	$(BIN)/python -m benchmarks.ceiling --data ../shared/datasets/train
	$(BIN)/python -m benchmarks.rounds
	$(BIN)/python -m benchmarks.model_card
	$(BIN)/python -m benchmarks.readme

train: install
	@mkdir -p "$(dir $(RUN))"
	@if [ -f "$(RUN).pid" ] && kill -0 "$$(cat "$(RUN).pid")" 2>/dev/null; then \
		echo "training already running (pid $$(cat "$(RUN).pid")), log $(RUN).log"; \
	else \
		nohup nice -n 10 $(BIN)/vaecodec train --data ../shared/datasets/train --out "$(RUN)" --resume-or-start \
			$(TRAIN_OPTIONS) >> "$(RUN).log" 2>&1 < /dev/null & echo $$! > "$(RUN).pid"; \
		echo "training in the background (pid $$(cat "$(RUN).pid")), log $(RUN).log, run folder $(RUN)"; \
	fi

train-stop:  # SIGINT: the run checkpoints, then exits
	@if [ -f "$(RUN).pid" ]; then kill -INT "$$(cat "$(RUN).pid")" 2>/dev/null || true; rm -f "$(RUN).pid"; fi

clean:
	rm -rf $(VENV) build *.egg-info
