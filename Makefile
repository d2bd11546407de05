# make run   - the self-contained demo (embedded PostgreSQL + exchange simulator)
# make test  - the test suite against a real PostgreSQL
# make check - static checks: ruff (lint and format) and mypy on the product packages
# make chaos - the kill -9 fault-injection suite (slow)
# make bench - the benchmarks (writes bench/results.json)
# make mutate - mutation testing of the policy, the position machine, the executor and
#               the feed parsers (mutmut; results in mutants/, counts printed at the end)
# Each creates .venv and installs the project on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCAL_PG := postgresql://postgres@127.0.0.1:5432/postgres

CHECKED := actors supervisor storage feeds exchanges

.PHONY: run test check chaos bench mutate clean

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

# Configuration: [tool.ruff] and [tool.mypy] in pyproject.toml. All three run, and the
# target fails if any of them found something.
check: $(STAMP)
	@rc=0; \
	$(VENV)/bin/ruff check $(CHECKED) || rc=1; \
	$(VENV)/bin/ruff format --check $(CHECKED) || rc=1; \
	$(VENV)/bin/mypy $(CHECKED) || rc=1; \
	exit $$rc

chaos: $(STAMP)
	@if [ -z "$$TEST_DATABASE_URL" ] && $(PY) -m storage.probe $(LOCAL_PG); then \
		export TEST_DATABASE_URL=$(LOCAL_PG); fi; \
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

# mutmut is installed on first use only (the optional dependency group "mutate").
# Configuration: [tool.mutmut] in pyproject.toml. A re-run retests only the functions
# that changed; MUTANTS=<glob> reruns just those mutants (e.g. 'actors.policy*').
MUTATE_STAMP := $(VENV)/.installed-mutate
MUTATE_JOBS  ?= 2

$(MUTATE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,mutate]'
	@touch $(MUTATE_STAMP)

mutate: $(MUTATE_STAMP)
	@if [ -z "$$TEST_DATABASE_URL" ] && $(PY) -m storage.probe $(LOCAL_PG); then \
		export TEST_DATABASE_URL=$(LOCAL_PG); fi; \
	$(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS); rc=$$?; \
	echo; $(PY) tools/mutmut_report.py --survivors && exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis mutants
