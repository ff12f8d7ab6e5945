# Two commands for a fresh clone: `make run` (the quickstart) and `make test`.
# Both create .venv when it is missing or older than setup.py/constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m vit_jax.main --config=configs/quickstart.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
