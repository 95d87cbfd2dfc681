#!/usr/bin/env bash
# Issue 34's GPU figures in one prepared call (../shared/gpu/README.md), after benchmarks/gpu_check.sh:
#   here:   make install && bash ../shared/gpu/wheels.sh
#   device: run with carry [".whl"] and command `bash .whl/run.sh bash benchmarks/gpu_speed.sh` (timeout_s 600)
# Logs go to $OUT. Each step prints its last lines: `knowloc bench attribution`'s summary (s/query, tflops,
# pct_peak, op_calls, peak_ratio) on the paper's shapes in bf16, and `knowloc bench study`'s estimate_s of the full
# built-in study on a LLaMA-3-8B shape.
set -u
OUT=${OUT:-/tmp/gpu-speed}
TAIL=2
source "$(dirname "$0")/gpu_steps.sh"

step attr-llama2-7b 150 $K bench attribution --model random:llama2-7b --device cuda --dtype bf16 --repeats 3
step attr-llama3-8b 150 $K bench attribution --model random:llama3-8b --device cuda --dtype bf16 --repeats 3
step study-llama3-8b 250 $K bench study --model random:llama3-8b --device cuda --dtype bf16
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
