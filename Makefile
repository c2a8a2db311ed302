# Two entry points, both doing their own set-up on a fresh machine (Python 3 + make):
#   make demo   - install into .venv, then run the demo on bundled photos
#   make test   - install into .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# A CPU build of torch; a plain `pip install torch` may pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0 || $(BIN)/python -m pip install --quiet "torch>=2.1,<3"
	$(BIN)/python -m pip install --quiet -e ".[test,sfm]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/localfeat demo -o outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
