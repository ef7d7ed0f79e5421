# APQ research suite. `make reproduce` regenerates results/; `make test` is what CI runs.
PROFILE ?= default
PY      := .venv/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup reproduce readme test unit nbcheck dryrun lab bench clean

setup:
	@bash env/setup.sh

reproduce: setup
	$(PY) -m apq_lib.runner reproduce --profile $(PROFILE)

# README's results block from results/ (summaries, tables, manifest); a test checks it.
readme:
	$(PY) -m apq_lib.readme

# Unit tests (with the JupyterLab browser test, tests/test_lab_browser.py, skipped without
# chromium), then every notebook under nbval on copies prepared with the smoke profile.
# Smoke runs write to build/ so they never touch the committed results/.
test: setup unit nbcheck

unit:
	.venv/bin/ruff check .
	$(PY) -m pytest tests -q -p no:cacheprovider

nbcheck:
	rm -rf build/nbval build/smoke_results
	$(PY) -m apq_lib.runner prepare --profile smoke --out build/nbval
	APQ_RESULTS_DIR=$(CURDIR)/build/smoke_results APQ_ARTIFACTS=$(CURDIR)/build/smoke_artifacts \
	  APQ_PROGRESS=text $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
	  --nbval-sanitize-with env/nbval_sanitize.cfg build/nbval

# The imagenet profile's chain on CPU in minutes: synthetic 224-px ImageFolder, a random OFA
# w1.3 supernet (fitted head) imported with apq-import-ofa, every notebook shrunk to seconds
# (build/dryrun; ~9 min on 2 shared cores). `make unit` runs it too (tests/test_dryrun.py).
dryrun: setup
	rm -rf build/dryrun
	$(PY) -m apq_lib.dryrun --out build/dryrun

# JupyterLab on notebooks/ with the `apq` kernel (as root too: containers run as root).
# Runs write to the scratch dir build/lab/results, never results/; to write the committed
# results run `APQ_RESULTS_DIR=$(CURDIR)/results make lab`. LAB_ARGS passes more options.
LAB_ARGS ?=
lab: setup
	.venv/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

bench: setup
	$(PY) benchmarks/bench_fake_quant.py
	$(PY) benchmarks/bench_lut.py
	$(PY) benchmarks/bench_search.py

clean:
	rm -rf build artifacts
