# make test: create .venv if missing, install requirements.txt, run the tests.
# make demo: install the same way, then run the main job on the generated sample data.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha1sum requirements.txt | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
SAMPLE ?= datasets/sample
DEMO_OUT ?= output/demo

.PHONY: install test lint demo bench clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .

demo: install
	$(PY) tools/make_sample_dataset.py --out $(SAMPLE) --num-train 240 --num-test 60 --seed 0
	$(PY) tools/split_folds.py --json $(SAMPLE)/train_all.json --folds 5 --out $(SAMPLE)/folds
	$(PY) tools/inspect_dataset.py --json $(SAMPLE)/train.json --out $(DEMO_OUT)/inspect

bench: install
	$(PY) benchmarks/data_loader.py

clean:
	rm -rf $(SAMPLE) output .pytest_cache .ruff_cache
