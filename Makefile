PYTHON ?= python3

.PHONY: install test lint unit bench example sample-data

install:            ## the trainer, the operator's dependencies and the test tools
	$(PYTHON) -m pip install -e '.[trainer,operator,dev]'

test: lint          ## what CI runs: lint, then every test
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

unit:               ## the fast tests only
	$(PYTHON) -m pytest -m "not slow"

bench:              ## throughput against the Hugging Face Trainer (see benchmarks/README.md)
	$(PYTHON) benchmarks/trainer_throughput.py --steps 100
	$(PYTHON) benchmarks/trainer_throughput.py --steps 100 --seq 512 --batch 4

example:            ## the main job on this machine
	codex-train run configs/examples/tiny-cpu.yaml

sample-data:        ## regenerate the shipped sample data (deterministic)
	$(PYTHON) configs/data/make_sample.py
