# make run   - the self-contained demo (embedded PostgreSQL + exchange simulator)
# make test  - the test suite against a real PostgreSQL
# make chaos - the kill -9 fault-injection suite (slow)
# make bench - the benchmarks (writes bench/results.json)
# make mutate - mutation testing of actors/executor.py (mutmut; survivors: .venv/bin/mutmut results)
# Each creates .venv and installs the project on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCAL_PG := postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: run test chaos bench mutate clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) run.py $(ARGS)

# Tests use TEST_DATABASE_URL when set, else the server at 127.0.0.1:5432 when it
# answers, else an embedded PostgreSQL started for the run.
test: $(STAMP)
	@if [ -z "$$TEST_DATABASE_URL" ] && $(PY) -m storage.probe $(LOCAL_PG); then \
		export TEST_DATABASE_URL=$(LOCAL_PG); echo "tests use PostgreSQL at $(LOCAL_PG)"; \
	fi; \
	$(PY) -m pytest $(PYTEST_ARGS)

chaos: $(STAMP)
	@if [ -z "$$TEST_DATABASE_URL" ] && $(PY) -m storage.probe $(LOCAL_PG); then \
		export TEST_DATABASE_URL=$(LOCAL_PG); fi; \
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

mutate: $(STAMP)
	@$(PY) -c 'import mutmut' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check mutmut
	rm -rf mutants
	$(VENV)/bin/mutmut run; $(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis mutants
