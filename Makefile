# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-full clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# The main job: a tiny random-weight configuration through the whole pipeline on the CPU.
demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash run_scripts/demo.sh

# The test suite CI runs (tiny models; about 15 minutes on 2 cores).
test: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -m "not full and not extended" -q -p no:cacheprovider

# Full-size checks (conversion of the official key/shape manifests into full-size models): slow, many GB;
# and the extended variants of default checks (other versions or layouts of the same code path).
test-full: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -m "full or extended" -q -p no:cacheprovider

clean:
	rm -rf $(VENV) samples outputs
