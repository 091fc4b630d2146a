# `make run`: set up from a bare machine, train the default recipe on Fashion-MNIST, print accuracy.
# `make test`: set up from a bare machine and run the tests (the documentation site's --strict build included).
# `make docs`: the documentation site into site/.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
NIN    := $(VENV)/bin/nin
FASHION_MNIST_SYSTEM_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data run test bench docs docs-figures clean

setup: $(VENV)/.core

# torch/torchvision pins in constraints.txt install from this project's machines' local disk.
$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

# the tests also need the optional extras (onnx, onnxruntime, matplotlib, tensorboard) and pytest
$(VENV)/.dev: $(VENV)/.core
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Fashion-MNIST: Debian's package when apt can install it, torchvision's download otherwise.
data: setup
	@if [ -f $(FASHION_MNIST_SYSTEM_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: $(FASHION_MNIST_SYSTEM_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); then \
		echo "Fashion-MNIST: installed $(FASHION_MNIST_SYSTEM_DIR)"; \
	else \
		$(NIN) data fashion-mnist --root data --download; \
	fi

run: data
	@root=$$([ -d $(FASHION_MNIST_SYSTEM_DIR) ] || echo data); \
	$(NIN) train --recipe fashion-mnist $${root:+--root $$root}

# one pytest worker per core (pytest-xdist); a file's tests stay on one worker, so that its module fixtures
# (small trained runs) are made once
test: $(VENV)/.dev data
	$(PY) -m pytest -n auto --dist loadfile

bench: $(VENV)/.dev data
	$(PY) benchmarks/fashion_mnist.py

# the documentation site (MkDocs + Material) into site/; --strict: a broken link or a missing page fails.
# The tests build it too (tests/test_docs.py).
docs: $(VENV)/.dev
	$(PY) -m mkdocs build --strict

# the site's pictures, made by nin's own commands from runs in results/ and the shipped weights (no training)
docs-figures: $(VENV)/.dev data
	$(PY) docs/make_figures.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache site
