# Two commands for a fresh clone: `make run` (the quickstart) and `make test`.
# Both create .venv when it is missing or older than setup.py/constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=
# Two worker processes (the CI machine's two cores), each taking whole files
# (pytest-xdist), the slowest first (tests/conftest.py SLOW_FILES).
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2

# The dataset preparation job on Apache Beam has its own venv: apache-beam's
# pins (protobuf<7, pyarrow<26) exclude the training stack's (constraints.txt).
PREP_VENV := .venv-prepare
PREP_STAMP := $(PREP_VENV)/.installed

.PHONY: run test install clean prepare-env

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m vit_jax.main --config=configs/quickstart.py --workdir=$(WORKDIR)

test: $(STAMP) $(PREP_STAMP)
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

prepare-env: $(PREP_STAMP)

$(PREP_STAMP): setup.py constraints-prepare.txt
	test -x $(PREP_VENV)/bin/python || $(PYTHON) -m venv $(PREP_VENV)
	$(PREP_VENV)/bin/python -m pip install -q --upgrade pip
	$(PREP_VENV)/bin/python -m pip install -q --no-deps -r constraints-prepare.txt
	$(PREP_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(PREP_STAMP)

clean:
	rm -rf $(VENV) $(PREP_VENV) runs .pytest_cache
