# Two commands on a fresh machine: `make demo` (a local pipeline run) and `make test` (the test suite).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo demo-azureml test test-fast step-env step-env-v2 lint format bench bigdata clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

node_modules/.bin/azurite-blob: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

venv: $(STAMP)

# A local pipeline run on the embedded default: the `local` backend and the shipped Ames data.
demo: $(STAMP)
	PIPELINE_BACKEND=local $(PY) -m pipeline_def run --backend local --show 5

# The Azure path with no Azure: one timer tick through function_app against the emulated workspace (which
# runs the published steps in their own venv), Azurite and a loopback managed identity; prints the predictions
# it downloads from the emulated default datastore. `PIPELINE_BACKEND=azureml-v2 make demo-azureml`: the same on
# Azure ML v2 over plain REST, the steps in the venv of requirements-v2.txt (no azureml). `SAMPLE_SIZE=0
# NODE_COUNT=2 make demo-azureml`: an HTTP run with those run parameters (every row, the parallel predict on 2
# nodes of the emulated cluster), checked to predict every shipped row once.
demo-azureml: $(STAMP) node_modules/.bin/azurite-blob step-env
	$(PY) -m emulator.demo $(if $(SAMPLE_SIZE),--sample-size $(SAMPLE_SIZE)) $(if $(NODE_COUNT),--node-count $(NODE_COUNT))

# The steps' own venv from step_scripts/requirements.txt (requirements-v2.txt when PIPELINE_BACKEND=azureml-v2),
# as Azure ML builds it: fails when the file stops resolving. Cached by the file's hash in $$STEP_ENV_CACHE
# (default .local/step-envs/), so a rerun is instant.
STEP_REQUIREMENTS = step_scripts/$(if $(filter azureml-v2,$(PIPELINE_BACKEND)),requirements-v2.txt,requirements.txt)
step-env: $(STAMP)
	$(PY) -m emulator.step_env $(STEP_REQUIREMENTS)

step-env-v2: $(STAMP)
	$(PY) -m emulator.step_env step_scripts/requirements-v2.txt

test: $(STAMP) node_modules/.bin/azurite-blob step-env step-env-v2
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The inner loop: the suite without the end-to-end emulated runs, the other slow tests and anything that needs the
# steps' venv (so it never builds one). `make test` stays the whole suite, the one CI runs.
test-fast: $(STAMP) node_modules/.bin/azurite-blob
	$(PY) -m pytest -q -m "not slow and not azure_path and not step_env and not live"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/actionlint .github/workflows/*.yml
	$(VENV)/bin/zizmor --offline .github/

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) bench/predict_step.py
	$(PY) bench/submit.py
	$(PY) bench/cold_start.py
	$(PY) bench/package_size.py
	$(PY) bench/history_growth.py

# A large Ames-like table for the scale benchmarks (bench/bigdata.py): `make bigdata ROWS=1000000 [OUT=path]`,
# Parquet by default (.csv.gz by the name), default OUT .local/bench/ames-<ROWS>.parquet.
ROWS ?= 1000000
bigdata: $(STAMP)
	$(PY) bench/bigdata.py --rows $(ROWS) $(if $(OUT),--out $(OUT))

clean:
	rm -rf $(VENV) node_modules .local .pytest_cache
