# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.kseg-installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: demo test test-slow install clean

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "kseg needs $(PYTHON) on PATH (or run: make PYTHON=/path/to/python3.11 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e ".[train,export,edge,dev]"
	@touch $(STAMP)

install: $(STAMP)

# The real nuclei image (Mask R-CNN tests, configs/maskrcnn_*_nuclei-*.yaml) ships inside the stardist wheel; the
# package registry is the one place it can come from, so a failed fetch is reported, and its tests then skip.
NUCLEI = runs/nuclei
$(NUCLEI)/.fetched:
	@mkdir -p $(NUCLEI)
	@$(BIN)/pip download -q --disable-pip-version-check --no-deps stardist==0.9.2 -d $(NUCLEI) && touch $@ \
	  || echo "could not fetch the stardist 0.9.2 wheel (nuclei data) into $(NUCLEI); its tests will skip"

# Tests run in TEST_WORKERS processes, one test file per process at a time (module fixtures stay shared; most tests
# are single-threaded Python around short TensorFlow calls, so two processes use two cores: 14 min instead of 25).
TEST_WORKERS ?= 2
test: $(STAMP) $(NUCLEI)/.fetched
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP) $(NUCLEI)/.fetched
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) demo_out runs

demo: $(STAMP)
	$(BIN)/kseg demo --out demo_out
