#!/usr/bin/env bash
# Issue 34's GPU figures in one prepared call (../shared/gpu/README.md), after benchmarks/gpu_check.sh:
#   here:   make install && bash ../shared/gpu/wheels.sh
#   device: run with carry [".whl"] and command `bash .whl/run.sh bash benchmarks/gpu_speed.sh` (timeout_s 600)
# Logs go to $OUT. Each step prints its last lines: `knowloc bench attribution`'s summary (s/query, tflops,
# pct_peak, op_calls, peak_ratio) on the paper's shapes in bf16, against knowledge-neurons (--peer, fp32) on the
# GPT-2-XL and GPT-J-6B shapes, and `knowloc bench study`'s estimate_s of the full built-in study on a LLaMA-3-8B
# shape. Arguments pick steps by name (all when none), so that the steps' limits fit one call's 600 s:
#   bash .whl/run.sh bash benchmarks/gpu_speed.sh attr-llama2-7b attr-llama3-8b peer-gpt2-xl
#   bash .whl/run.sh bash benchmarks/gpu_speed.sh peer-gptj-6b study-llama3-8b attr-llama2-7b-b8
set -u
OUT=${OUT:-/tmp/gpu-speed}
TAIL=2
source "$(dirname "$0")/gpu_steps.sh"
want() { [ -z "$PICK" ] || [[ " $PICK " == *" $1 "* ]]; }
PICK="$*"

want attr-llama2-7b && step attr-llama2-7b 150 $K bench attribution --model random:llama2-7b --device cuda --dtype bf16 --repeats 3
want attr-llama3-8b && step attr-llama3-8b 150 $K bench attribution --model random:llama3-8b --device cuda --dtype bf16 --repeats 3
want peer-gpt2-xl && step peer-gpt2-xl 120 $K bench attribution --model random:gpt2-xl --device cuda --repeats 3 --peer
want peer-gptj-6b && step peer-gptj-6b 150 $K bench attribution --model random:gptj-6b --device cuda --repeats 3 --peer
want attr-llama2-7b-b8 && step attr-llama2-7b-b8 150 $K bench attribution --model random:llama2-7b --device cuda --dtype bf16 --repeats 3 --batch 8
want study-llama3-8b && step study-llama3-8b 250 $K bench study --model random:llama3-8b --device cuda --dtype bf16
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
