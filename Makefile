# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_DIR := demo_output/$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test test-fast clean pretrained

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Explore, train briefly on the bundled sample, evaluate on its separate test part, predict.
demo: $(INSTALLED)
	@mkdir -p $(DEMO_DIR)
	$(VENV)/bin/nucleiseg eda --data "$$($(PY) -c 'from nucleiseg.io import bundled_sample; print(bundled_sample())')" --out $(DEMO_DIR)/eda.png
	$(VENV)/bin/nucleiseg train --out $(DEMO_DIR)/run --epochs 20 --steps-per-epoch 15 --batch-size 8
	$(VENV)/bin/nucleiseg evaluate --model $(DEMO_DIR)/run/model.keras --figure $(DEMO_DIR)/test_predictions.png
	$(VENV)/bin/nucleiseg predict --model $(DEMO_DIR)/run/model.keras --out $(DEMO_DIR)/predictions "$$($(PY) -c 'from nucleiseg.io import bundled_sample; print(bundled_sample("test"))')"
	@echo
	@echo "Demo outputs are in $(DEMO_DIR)/:"
	@echo "  eda.png                 sample images and their nuclei"
	@echo "  run/                    the trained model (model.keras), curves.png, epochs/, metrics.json, logs/"
	@echo "  test_predictions.png    input / true / predicted on the bundled test images"
	@echo "  predictions/            <image>_mask.png and <image>_overlay.png per test image"

test: $(INSTALLED)
	$(PY) -m pytest -q

test-fast: $(INSTALLED)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo_output .pytest_cache

# Retrain and ship the bundled pretrained model (about 90 minutes on 2 CPU cores):
#   make pretrained DSB=../shared/data/dsb2018-stage1-train
# The post-processing values were chosen with scripts/tune_postprocessing.py on 60 training
# images (README, Results).
DSB ?= ../shared/data/dsb2018-stage1-train
PRETRAINED_RUN := runs/pretrained-$(shell date +%Y%m%d-%H%M%S)
POSTPROCESSING := --foreground-threshold 0.6 --marker-threshold 0.7 --min-size 30
pretrained: $(INSTALLED)
	$(VENV)/bin/nucleiseg train --data $(DSB) --out $(PRETRAINED_RUN) --sampling crops \
	  --image-size 256 --target boundary --boundary-weight 2 --decoder-filters 256,128,64,32 \
	  --batch-size 8 --steps-per-epoch 100 --epochs 40 --lr-schedule cosine --val-fraction 0.15 \
	  --patience 10
	$(VENV)/bin/nucleiseg evaluate --model $(PRETRAINED_RUN)/model.keras --data $(DSB) \
	  --split val $(POSTPROCESSING) --json > $(PRETRAINED_RUN)/evaluation.json
	$(PY) scripts/ship_model.py $(PRETRAINED_RUN) --evaluation $(PRETRAINED_RUN)/evaluation.json \
	  --postprocessing '{"foreground_threshold": 0.6, "marker_threshold": 0.7, "min_size": 30}'
