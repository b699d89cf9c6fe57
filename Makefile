# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_DIR := demo_output/$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo lint docs docs-serve test test-fast check-light-install check-extras clean \
  pretrained

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,plots,export,large,napari,dask,bioimageio,docs,test]'
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
	$(VENV)/bin/ruff check src scripts benchmarks tests docs
	$(VENV)/bin/lint-imports

# The documentation site (mkdocs.yml, docs/): strict, so a broken link, a missing page, a
# command without its generated reference or a docstring that does not render fails the build.
docs: $(INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

docs-serve: $(INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# The napari widget's test runs Qt offscreen: no display needed. -n auto: one pytest worker per
# core (pytest-xdist); the tests that train or start processes dominate, and work stealing
# keeps them from ending up on one worker (11.5 min against 14 with the default split).
test: lint docs
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -n auto --dist worksteal

test-fast: $(INSTALLED)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -n auto -m "not slow"

# `pip install nucleiseg` without extras, in a fresh venv (not .venv): no TensorFlow, the bundled
# sample segmented, outlines for QuPath and Fiji written (1 to 2 minutes; needs PyPI)
check-light-install:
	PYTHON=$(PYTHON) scripts/check_light_install.sh

# Each user-facing extra set alone in a fresh venv (not .venv), as README tells users to install
# it, with the newest versions its bounds allow, then what it is for: [train,export,bioimageio]
# exports the bundled model for bioimage.io and `bioimageio test`s it; [napari] opens the sample
# in napari's ViewerModel (no Qt window); [dask] predicts on a LocalCluster. `make test` installs
# all extras together, where one extra's bounds can hide another's break. (Needs PyPI.)
check-extras:
	PYTHON=$(PYTHON) scripts/check_extras.sh

clean:
	rm -rf $(VENV) demo_output .pytest_cache site

# Retrain and ship the two bundled models in five runs, each starting from the one before: a
# base model on native-resolution DSB crops; a fine-tune with wide zoom (nuclei 1/3x to 3x),
# stain, blur and noise augmentation; a fine-tune on DSB together with TNBC H&E (validation on
# whole held-out patients), whose last epoch is the general model; from it a run with the
# paler half of the H&E nuclei weighted 3x in the loss, and from that one's last epoch the H&E
# model (docs/models.md): colour images only (TNBC and the DSB's own colour training images),
# pale nuclei weighted. About 2 h 40 min + 50 min + 65 min + 60 min + 45 min on 2 CPU cores;
# an interrupted run continues with `nucleiseg train --resume <run>`, then run `make
# pretrained` again with the same RUN:
#   make pretrained DSB=../shared/data/dsb2018-stage1-train TNBC=../shared/data/tnbc2018
# The post-processing values were chosen with scripts/tune_postprocessing.py on training images
# (docs/design.md; the histology ones on TNBC and DSB histology training images:
# docs/results.md); ship_model.py stores them in the model, with the stain reference of the
# TNBC training tiles that colour images are matched to; the later runs inherit both.
DSB ?= ../shared/data/dsb2018-stage1-train
TNBC ?= ../shared/data/tnbc2018
RUN ?= runs/pretrained-$(shell date +%Y%m%d-%H%M%S)
POSTPROCESSING := {"foreground_threshold": 0.6, "marker_threshold": 0.5, "min_size": 30, \
  "fill_holes": true, "split_levels": [0.8, 0.9], "min_split_size": 80, "min_confidence": 0.8, \
  "by_kind": {"histology": {"min_confidence": 0.75}}}
SHIP = $(PY) scripts/ship_model.py $(RUN)/histology --weights last \
  --postprocessing '$(POSTPROCESSING)' --stain-reference $(TNBC)
COMMON := --sampling crops --image-size 256 --target boundary --boundary-weight 2 \
  --contact-weight 3 --decoder-filters 256,128,64,32 --batch-size 8 --steps-per-epoch 100 \
  --lr-schedule cosine --val-fraction 0.15 --patience 20 --intensity-augment
ROBUST := --zoom-augment 3 --stain-augment --blur-noise-augment --learning-rate 0.0005
PALE := --zoom-augment 3 --stain-augment --blur-noise-augment --learning-rate 0.0003 \
  --pale-weight 3
pretrained: $(INSTALLED)
	test -f $(RUN)/base/model.keras || $(VENV)/bin/nucleiseg train --data $(DSB) $(COMMON) \
	  --out $(RUN)/base --epochs 100 --zoom-augment 1.4
	test -f $(RUN)/robust/model.keras || $(VENV)/bin/nucleiseg train --data $(DSB) $(COMMON) \
	  --out $(RUN)/robust --init-model $(RUN)/base/model.keras --epochs 35 $(ROBUST)
	test -f $(RUN)/histology/model.keras || $(VENV)/bin/nucleiseg train --data $(DSB) \
	  --data $(TNBC) --group-pattern '^[^_]+' $(COMMON) --out $(RUN)/histology \
	  --init-model $(RUN)/robust/model.keras --epochs 36 $(ROBUST)
	# the general model: the histology run's last epoch; the pale run starts from it
	test -f $(RUN)/histology/shipped.keras || { $(SHIP) && \
	  cp src/nucleiseg/pretrained/nuclei_dsb2018.keras $(RUN)/histology/shipped.keras; }
	test -f $(RUN)/pale/model.keras || $(VENV)/bin/nucleiseg train --data $(DSB) \
	  --data $(TNBC) --group-pattern '^[^_]+' $(COMMON) --out $(RUN)/pale \
	  --init-model $(RUN)/histology/shipped.keras --epochs 24 $(PALE)
	# the H&E model starts from the pale run's last epoch, on colour images only
	test -f $(RUN)/pale/shipped.keras || { $(PY) scripts/ship_model.py $(RUN)/pale \
	  --weights last --he && cp src/nucleiseg/pretrained/nuclei_he.keras $(RUN)/pale/shipped.keras; }
	test -d $(RUN)/dsb-colour-train || $(PY) scripts/colour_subset.py $(RUN)/pale/split.json \
	  $(DSB) $(RUN)/dsb-colour-train
	test -f $(RUN)/he/model.keras || $(VENV)/bin/nucleiseg train \
	  --data $(RUN)/dsb-colour-train --data $(TNBC) --group-pattern '^[^_]+' $(COMMON) \
	  --out $(RUN)/he --init-model $(RUN)/pale/shipped.keras --epochs 20 $(PALE)
	$(PY) scripts/ship_model.py $(RUN)/he --he
	# the general model evaluated as shipped, then shipped again with its evaluation
	$(VENV)/bin/nucleiseg evaluate --data $(DSB) --model bundled-general --split val --json \
	  > $(RUN)/histology/evaluation.json
	$(SHIP) --evaluation $(RUN)/histology/evaluation.json
