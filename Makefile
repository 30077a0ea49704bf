# medimg: `make train` and `make test` set everything up on first use.
#   make train   train the default model on the embedded synthetic phantom
#   make test    run the whole test suite
#   make lint    check style and formatting with ruff
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The machine-wide pip config may point at a local CPU-only torch wheel that PyPI's torchvision
# cannot load; clearing find-links makes the venv take torch and torchvision together from the index.
PIP    := PIP_FIND_LINKS= $(BIN)/pip

.PHONY: train test lint install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[test]"
	# Hydra's Optuna sweeper (hydra/sweeper=optuna) still pins optuna<3, whose SQL storage predates
	# SQLAlchemy 2 (which MLflow 3 needs); it runs on Optuna 4+ (tests/test_sweeps.py), so it goes
	# in without its pin.
	$(PIP) install --no-deps "hydra-optuna-sweeper==1.3.0"
	touch $@

train: install
	$(BIN)/medimg train

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check medimg medimg_cli tests benchmarks
	$(BIN)/ruff format --check medimg medimg_cli tests benchmarks

clean:
	rm -rf $(VENV) outputs runs multirun .pytest_cache
