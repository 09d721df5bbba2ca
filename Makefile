# make test: create .venv if missing, install requirements*.txt and the package (editable), run the tests.
# make test-fast: the same install, then the fast tests only (under 3 minutes on 2 cores).
# make demo: the same install, then the main job end to end on the generated sample data.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt requirements-tracking.txt requirements-deploy.txt pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
SAMPLE ?= datasets/sample
DEMO_OUT ?= output/demo
# The same seed gives other numbers on another machine when torch's thread count differs (sums are split per
# thread) or the instruction set its kernels are chosen for (torch, oneDNN, MKL: AVX-512 and AVX2 round
# differently). The demo pins the thread count to that of the demo's figure; DEMO_AVX2=1 also pins the kernels
# to AVX2, so AVX-512 and AVX2 machines agree too, at about a quarter more training time (docs/getting_started.md).
DEMO_THREADS ?= 2
DEMO_AVX2 ?=
DEMO_ENV = OMP_NUM_THREADS=$(DEMO_THREADS)$(if $(DEMO_AVX2), ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2)
DEMO_OPTS ?=
SAMPLE_ARGS ?= --num-train 240 --num-test 60 --seed 0
# What the sample data is made from, and what the demo's run is made from (code, configs, data, settings):
# the data is generated again when its key changes; a run folder of another key is never resumed.
SAMPLE_KEY = $(shell cat mask2former/data/sample_dataset.py requirements.txt | sha1sum | cut -c1-12) $(SAMPLE_ARGS)
DEMO_KEY = $(shell { find mask2former semask tools configs train_net.py -type f \( -name '*.py' -o -name '*.yaml' \) \
	| LC_ALL=C sort | xargs cat; cat requirements.txt; } | sha1sum | cut -c1-12) $(SAMPLE_KEY) $(DEMO_ENV) $(DEMO_OPTS)

.PHONY: install test test-fast lint demo demo-data demo-outdir bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-tracking.txt requirements-deploy.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt -r requirements-tracking.txt -r requirements-deploy.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

# The whole suite (CI), with the 25 slowest tests listed at the end.
test: install
	$(PY) -m pytest -q --durations=25

# The edit-run loop: the tests that start no child process, need no browser or GPU and take under ~3 s each
# (markers in pyproject.toml); every test module keeps its fast tests here.
FAST_MARKERS = not slow and not subprocess and not browser and not gpu
test-fast: install
	$(PY) -m pytest -q -m "$(FAST_MARKERS)"

lint: install
	$(PY) -m ruff check .

demo: install
	@$(MAKE) --no-print-directory demo-data demo-outdir
	$(PY) tools/split_folds.py --json $(SAMPLE)/train_all.json --folds 5 --out $(SAMPLE)/folds
	$(PY) tools/inspect_dataset.py --json $(SAMPLE)/train.json --out $(DEMO_OUT)/inspect
	$(DEMO_ENV) $(PY) train_net.py --config-file configs/quickstart.yaml --resume OUTPUT_DIR $(DEMO_OUT)/quickstart $(DEMO_OPTS)
	$(DEMO_ENV) $(PY) tools/predict.py --config-file configs/quickstart.yaml --weights $(DEMO_OUT)/quickstart/model_final.pth \
		--json $(SAMPLE)/val.json --out $(DEMO_OUT)/predict_val --overlays 8 --threads $(DEMO_THREADS)
	$(PY) tools/evaluate.py --gt $(SAMPLE)/val.json --pred $(DEMO_OUT)/predict_val/submission.csv --out $(DEMO_OUT)/eval_val
	$(DEMO_ENV) $(PY) tools/predict.py --config-file configs/quickstart.yaml --weights $(DEMO_OUT)/quickstart/model_final.pth \
		--json $(SAMPLE)/test.json --out $(DEMO_OUT)/predict_test --overlays 16 --threads $(DEMO_THREADS)
	$(PY) tools/check_submission.py $(DEMO_OUT)/predict_test/submission.csv --test-json $(SAMPLE)/test.json
	@echo
	@echo "demo outputs:"
	@echo "  data statistics and pictures: $(DEMO_OUT)/inspect/"
	@echo "  training run (config, log, metrics.csv, loss_curve.png, checkpoints, model_final.pth): $(DEMO_OUT)/quickstart/"
	@echo "  val evaluation (confusion_matrix.png, sem_seg_metrics.json): $(DEMO_OUT)/eval_val/"
	@echo "  test submission (validated) and overlays: $(DEMO_OUT)/predict_test/"

# demo's steps: the sample data, generated unless SAMPLE holds what this generator makes with SAMPLE_ARGS
# (SAMPLE/.demo-key, written once it is complete); then DEMO_OUT, refused if it holds a run of another key.
demo-data:
	@if [ ! -f $(SAMPLE)/train_all.json ] || [ "$$(cat $(SAMPLE)/.demo-key 2>/dev/null)" != "$(SAMPLE_KEY)" ]; then \
		rm -f $(SAMPLE)/.demo-key; \
		echo "$(PY) tools/make_sample_dataset.py --out $(SAMPLE) $(SAMPLE_ARGS) --overwrite"; \
		$(PY) tools/make_sample_dataset.py --out $(SAMPLE) $(SAMPLE_ARGS) --overwrite || { \
			echo "make demo: could not generate $(SAMPLE): move it away, or give another folder (make demo SAMPLE=...)" >&2; \
			exit 2; }; \
		echo "$(SAMPLE_KEY)" > $(SAMPLE)/.demo-key; \
	fi

demo-outdir:
	@key="$(DEMO_KEY)"; \
	if [ -n "$$(ls -A $(DEMO_OUT) 2>/dev/null)" ] && [ "$$(cat $(DEMO_OUT)/.demo-key 2>/dev/null)" != "$$key" ]; then \
		echo "make demo: $(DEMO_OUT) holds a demo run made by other code, data or settings, which would be resumed:" \
			"remove it (rm -r $(DEMO_OUT)) or give another folder (make demo DEMO_OUT=...)" >&2; \
		exit 2; \
	fi; \
	mkdir -p $(DEMO_OUT) && echo "$$key" > $(DEMO_OUT)/.demo-key

bench: install
	$(PY) benchmarks/data_loader.py
	$(PY) benchmarks/train_step.py --config-file configs/quickstart.yaml --batch 4 --size 256 --steps 10
	$(PY) benchmarks/ms_deform_attn.py --check
	$(PY) benchmarks/neighborhood_attention.py --check

clean:
	rm -rf $(SAMPLE) output .pytest_cache .ruff_cache
