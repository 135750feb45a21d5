# The two commands of the README. Both set up what they need from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup setup-dev gen lint bench mutate faults clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e .

setup-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"

## run: set up and serve on embedded PostgreSQL + Redis (or GANTRY_DATABASE_URL / GANTRY_REDIS_URL)
run: setup
	$(BIN)/gantry serve

## gen: regenerate Python and Go code from proto/ and lint the protos
gen: setup-dev
	$(BIN)/python scripts/gen.py
	$(BIN)/python scripts/endpoints_doc.py

## test: set up, check generated code is fresh, lint, vet Go, run the whole suite (Python + Go)
test: setup-dev
	$(BIN)/python scripts/gen.py --check
	cd clients/go && go vet ./...
	$(BIN)/python -m pytest -q -p no:cacheprovider

## bench: the load scenarios of bench/ (figures go to docs/performance.md)
bench: setup-dev
	$(BIN)/python bench/run.py

## faults: the long fault run (kills, database restarts, Redis loss, provider faults; docs/reliability.md)
## (FAULTS="--kills 20 --seed 7" to change it)
faults: setup-dev
	$(BIN)/python -m tests.faults.run $(or $(FAULTS),--kills 200 --db-restarts 5 --redis-restarts 2 --redis-flushes 2 --provider-faults 6 --load-seconds 1500)

## mutate: mutation testing of the modules that handle money and trust (slow, not in `make test`; docs/testing.md)
## (MODULES="costs binding" for some of them)
mutate: setup-dev
	$(BIN)/python scripts/mutate.py $(MODULES)

clean:
	rm -rf $(VENV) .build
