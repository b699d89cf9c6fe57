# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_DIR := demo_output/$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo lint test test-fast clean pretrained

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[plots,onnx,export,large,bioimageio,test]'
	touch $@

SAMPLE = "$$($(PY) -c 'from nucleiseg.io import bundled_sample; print(bundled_sample("$(1)"))')"

# Explore the bundled sample, segment its test images with the bundled pretrained model, then
# train a model briefly on the sample, evaluate it on the separate test images and predict.
demo: $(INSTALLED)
	@mkdir -p $(DEMO_DIR)
	$(VENV)/bin/nucleiseg eda --data $(call SAMPLE,train) --out $(DEMO_DIR)/eda.png
	$(VENV)/bin/nucleiseg predict $(call SAMPLE,test) --out $(DEMO_DIR)/nuclei
	$(VENV)/bin/nucleiseg train --out $(DEMO_DIR)/run --epochs 20 --steps-per-epoch 15 --batch-size 8
	$(VENV)/bin/nucleiseg evaluate --model $(DEMO_DIR)/run/model.keras --figure $(DEMO_DIR)/test_predictions.png
	$(VENV)/bin/nucleiseg predict --model $(DEMO_DIR)/run/model.keras --out $(DEMO_DIR)/run_predictions $(call SAMPLE,test)
	@echo
	@echo "Demo outputs are in $(DEMO_DIR)/:"
	@echo "  eda.png               sample images and their labelled nuclei"
	@echo "  nuclei/               the bundled model on the test images: <image>_labels.tif, _mask.png,"
	@echo "                        _overlay.png, measurements.csv (one row per nucleus), summary.csv"
	@echo "  run/                  a model trained on the sample: model.keras, curves.png, epochs/, metrics.json, logs/"
	@echo "  test_predictions.png  that model on the test images: input / true / predicted nuclei"
	@echo "  run_predictions/      that model's outputs for the test images"

lint: $(INSTALLED)
	$(VENV)/bin/ruff check src scripts benchmarks tests

test: lint
	$(PY) -m pytest -q

test-fast: $(INSTALLED)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo_output .pytest_cache

# Retrain and ship the bundled pretrained model (about 2 h 40 min on 2 CPU cores; an interrupted
# run continues with `nucleiseg train --resume <run>`):
#   make pretrained DSB=../shared/data/dsb2018-stage1-train
# The post-processing values were chosen with scripts/tune_postprocessing.py on 60 training
# images (README, Results); ship_model.py stores in the model the ones the evaluation used.
DSB ?= ../shared/data/dsb2018-stage1-train
PRETRAINED_RUN := runs/pretrained-$(shell date +%Y%m%d-%H%M%S)
POSTPROCESSING := --foreground-threshold 0.6 --marker-threshold 0.5 --min-size 30 \
  --split-levels 0.8,0.9 --min-split-size 80 --min-confidence 0.8
pretrained: $(INSTALLED)
	$(VENV)/bin/nucleiseg train --data $(DSB) --out $(PRETRAINED_RUN) --sampling crops \
	  --image-size 256 --target boundary --boundary-weight 2 --contact-weight 3 \
	  --decoder-filters 256,128,64,32 --batch-size 8 --steps-per-epoch 100 --epochs 100 \
	  --lr-schedule cosine --val-fraction 0.15 --patience 20 --zoom-augment 1.4 \
	  --intensity-augment
	$(VENV)/bin/nucleiseg evaluate --model $(PRETRAINED_RUN)/model.keras --data $(DSB) \
	  --split val $(POSTPROCESSING) --json > $(PRETRAINED_RUN)/evaluation.json
	$(PY) scripts/ship_model.py $(PRETRAINED_RUN) --evaluation $(PRETRAINED_RUN)/evaluation.json
