# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install browser demo app app-v2 test test-full clean

$(VENV)/.installed: requirements.txt requirements-app.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# The main job: a tiny random-weight configuration through the whole pipeline on the CPU.
demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash run_scripts/demo.sh

# The web app on the tiny random-weight config: http://127.0.0.1:7860 (PORT=... to change it); app-v2: 2.0's.
PORT ?= 7860
app: install
	$(PY) scripts/app.py --config configs/tiny/inference/sample_t2v.yaml --save-dir samples/app --port $(PORT)
app-v2: install
	$(PY) scripts/app.py --config configs/tiny/inference/sample_v2.yaml --save-dir samples/app_v2 --port $(PORT)

# Chromium for the web app's browser test, part of `make test` (Debian's package; needs root or an installed chromium).
browser:
	bash run_scripts/install_browser.sh
test: browser

# The test suite CI runs (tiny models; about 14 minutes on 2 cores, plus installing).
test: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -m "not full and not extended" -q -p no:cacheprovider

# Full-size checks (conversion of the official key/shape manifests into full-size models): slow, many GB;
# and the extended variants of default checks (other versions or layouts of the same code path).
test-full: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -m "full or extended" -q -p no:cacheprovider

clean:
	rm -rf $(VENV) samples outputs
