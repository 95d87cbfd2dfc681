#!/usr/bin/env bash
# The GPU checks of issue 32 in one prepared call, for a session that is lent a GPU (../shared/gpu/README.md):
#   here:   make install && bash ../shared/gpu/wheels.sh
#   device: run with carry [".whl"] and command `bash .whl/run.sh bash benchmarks/gpu_check.sh` (timeout_s 600; the steps are bounded to about 560 s)
# Logs go to $OUT (what the device tool brings back): suite.log, study.log, shapes.log. Each step prints one line.
set -u
OUT=${OUT:-/tmp/gpu-check}
source "$(dirname "$0")/gpu_steps.sh"

# 1. the whole suite on the GPU (models and inputs on cuda: KNOWLOC_TEST_DEVICE defaults to cuda there)
step suite 270 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 150 -rfE
# 2. every experiment end to end on cuda (a tiny model: correctness, not speed)
step study 140 $K study --model tiny-llama --device cuda --data builtin --candidates --facts 8 --methods ig \
  --steps 3 --experiments consistency,modification,query-mapping,attention,cas,cas-sweep,update-sweep,editors,tracing,localization-vs-editing \
  --specificity-queries 1 --rome-samples 16 --lve-facts 4 --n-boot 100 --out /tmp/allx --no-progress
# 3. the paper's shapes: a 7B in bf16 built on the card, one attribution; the dry run's memory lines of an 8B
step shapes 140 bash -c "$K localize --model random:llama2-7b --device cuda --dtype bf16 --prompt 'The capital of France is' --target Paris --method ig && \
  $K study --model random:llama3-8b --device cuda --compute-dtype bf16 --data builtin --candidates --facts 2 --methods ig --experiments consistency,editors --out /tmp/dry8b --dry-run"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
