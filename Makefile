# Two commands for a new user (README): `make demo` runs the main job, `make test` the test suite.
# Both install everything into .venv first (a no-op in about a second once done).
PY := .venv/bin/python
DEMO_CFG := configs/MaskRCNN/mask_rcnn_R_18_FPN_synthetic.yaml
DEMO_OUT ?= output/demo

.PHONY: install demo test

install:
	bash install/install.sh

demo: install
	$(PY) tools/make_synthetic.py --splits synthetic_shapes_train synthetic_shapes_val
	$(PY) tools/train_net.py --config-file $(DEMO_CFG) DATASETS.TEST "()" OUTPUT_DIR $(DEMO_OUT)
	$(PY) tools/train_net.py --config-file $(DEMO_CFG) --eval-only \
		MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth OUTPUT_DIR $(DEMO_OUT)/eval
	@echo "metrics: $(DEMO_OUT)/eval/eval_results.json; PNGs: $(DEMO_OUT)/eval/inference/synthetic_shapes_val/vis/"

test: install
	$(PY) -m pytest -q tests
