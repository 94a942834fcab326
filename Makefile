# Two commands do all the set-up: `make tour` and `make test`. Both (re)create .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned, so pip never resolves another (multi-GB) build for a dependency.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: venv test tour bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test]' $(TORCH_PIN)
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider tests

tour: $(STAMP)
	$(BIN)/mbconv tour --out results/tour --results experiments/results

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.phone  # ExecuTorch vs ONNX Runtime; says "skipped" without the phone extra

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments

clean:
	rm -rf $(VENV) results build *.egg-info
