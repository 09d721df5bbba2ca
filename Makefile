# make test: create .venv if missing, install requirements*.txt and the package (editable), run the tests.
# make demo: the same install, then the main job end to end on the generated sample data.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
SAMPLE ?= datasets/sample
DEMO_OUT ?= output/demo

.PHONY: install test lint demo bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .

demo: install
	@test -f $(SAMPLE)/train_all.json || $(PY) tools/make_sample_dataset.py --out $(SAMPLE) --num-train 240 --num-test 60 --seed 0
	$(PY) tools/split_folds.py --json $(SAMPLE)/train_all.json --folds 5 --out $(SAMPLE)/folds
	$(PY) tools/inspect_dataset.py --json $(SAMPLE)/train.json --out $(DEMO_OUT)/inspect
	$(PY) train_net.py --config-file configs/quickstart.yaml --resume OUTPUT_DIR $(DEMO_OUT)/quickstart
	$(PY) tools/predict.py --config-file configs/quickstart.yaml --weights $(DEMO_OUT)/quickstart/model_final.pth \
		--json $(SAMPLE)/val.json --out $(DEMO_OUT)/predict_val --overlays 8
	$(PY) tools/evaluate.py --gt $(SAMPLE)/val.json --pred $(DEMO_OUT)/predict_val/submission.csv --out $(DEMO_OUT)/eval_val
	$(PY) tools/predict.py --config-file configs/quickstart.yaml --weights $(DEMO_OUT)/quickstart/model_final.pth \
		--json $(SAMPLE)/test.json --out $(DEMO_OUT)/predict_test --overlays 16
	$(PY) tools/check_submission.py $(DEMO_OUT)/predict_test/submission.csv --test-json $(SAMPLE)/test.json
	@echo
	@echo "demo outputs:"
	@echo "  data statistics and pictures: $(DEMO_OUT)/inspect/"
	@echo "  training run (config, log, metrics.csv, loss_curve.png, checkpoints, model_final.pth): $(DEMO_OUT)/quickstart/"
	@echo "  val evaluation (confusion_matrix.png, sem_seg_metrics.json): $(DEMO_OUT)/eval_val/"
	@echo "  test submission (validated) and overlays: $(DEMO_OUT)/predict_test/"

bench: install
	$(PY) benchmarks/data_loader.py
	$(PY) benchmarks/train_step.py --config-file configs/quickstart.yaml --batch 4 --size 256 --steps 10
	$(PY) benchmarks/ms_deform_attn.py --check
	$(PY) benchmarks/neighborhood_attention.py --check

clean:
	rm -rf $(SAMPLE) output .pytest_cache .ruff_cache
