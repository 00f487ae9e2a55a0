# One way to run everything: CI calls these same targets.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lint typecheck test unit demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The whole suite: lint, types, unit tests, then integration tests against the
# real RabbitMQ and PostgreSQL on this machine and the local stand-ins.
test: lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# The main job on the local stand-ins: mesh up, sample images through, mesh down.
# IMAGES=DIR runs real mammograms (PNG or DICOM) instead of the phantom.
IMAGES ?=
demo: $(STAMP)
	$(BIN)/obscura demo $(if $(IMAGES),--images $(IMAGES))

# Benchmarks print ratios; they are not part of `make test`.
bench: $(STAMP)
	$(BIN)/obscura bench worker
	$(BIN)/obscura bench mesh

clean:
	rm -rf $(VENV) .obscura .mypy_cache .pytest_cache .ruff_cache
