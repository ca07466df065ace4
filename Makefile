# Everything a fresh machine needs: `make demo` and `make test` create .venv when missing
# and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools

test: lint
	$(PY) -m pytest

# The main job: train, evaluate and benchmark one small model per token mixer (2 seeds each)
# on the built-in mnist5k digits, then write runs/compare-mnist5k-native-small/report.{md,html}.
# --resume: a second `make demo` keeps the finished runs (and refuses, naming them, if the
# options changed; pass --overwrite to tokenmixers compare to start again).
demo: $(STAMP)
	$(VENV)/bin/tokenmixers compare --data mnist5k --resume

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
