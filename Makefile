# The two commands: `make demo` (set up, prepare the default model, start the dashboard)
# and `make test` (set up, run the whole test suite). Both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501

.PHONY: setup demo test bench clean

setup: $(STAMP)

# Re-install when the venv is missing or older than the requirements.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lcodec_core prepare --dataset olivetti
	$(PY) -m streamlit run app/streamlit_app.py --server.address localhost \
		--server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: $(STAMP)
	$(PY) tests/find_chromium.py
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache test-output
