# Two entry points for a fresh machine:
#   make demo   - install into .venv, build a small Biased MNIST, print its statistics, write a sample grid
#   make test   - install into .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DEMO   ?= demo-out

.PHONY: install demo test clean

# pip's cache is off: torch's CUDA build comes as about 3 GB of wheels, and a cached copy would stay behind
# beside the 6.6 GB installed (a clean clone's CI run peaks at 6.8 GiB of disk without it).
export PIP_NO_CACHE_DIR = 1

$(VENV)/.installed: pyproject.toml
	@bash scripts/check_disk.sh . 8
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first, pinned to the builds this kind of machine carries on disk
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[test,tensorboard,aim,ray,slurm]"
	touch $@

install: $(VENV)/.installed

demo: install
	bash scripts/demo.sh $(DEMO)

# the tests in one worker process per core (pytest-xdist; tests/conftest.py gives each its share of torch's threads)
test: install
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m pytest -n auto --dist worksteal tests

clean:
	rm -rf $(VENV) $(DEMO)
