# Two commands for a new user (README.md): `make demo` runs the main job, `make test` the test suite.
# Both install everything into .venv first (a no-op in about a second once done).
PY := .venv/bin/python
DEMO_CFG := configs/MaskRCNN/mask_rcnn_R_18_FPN_synthetic_demo.yaml
DEMO_OUT ?= output/demo

.PHONY: install demo test

install:
	bash install/install.sh

# The demo's wall time is measured from after the installation to the printed metrics and PNGs.
demo: install
	@start=$$(date +%s); \
	$(PY) tools/make_synthetic.py --splits synthetic_shapes_train synthetic_shapes_val && \
	$(PY) tools/train_net.py --config-file $(DEMO_CFG) DATASETS.TEST "()" OUTPUT_DIR $(DEMO_OUT) && \
	$(PY) tools/train_net.py --config-file $(DEMO_CFG) --eval-only \
		MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth OUTPUT_DIR $(DEMO_OUT)/eval && \
	secs=$$(( $$(date +%s) - start )) && \
	echo "metrics: $(DEMO_OUT)/eval/eval_results.json; PNGs: $(DEMO_OUT)/eval/inference/synthetic_shapes_val/vis/" && \
	echo "make demo: data + training + evaluation + PNGs took $$((secs / 60)) min $$((secs % 60)) s"

test: install
	$(PY) -m pytest -q tests
