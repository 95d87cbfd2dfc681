#!/bin/bash
# Every way a run can end (issue 24): prints a table (case, exit code, stderr, what the directory holds after).
# Run from the repository root after `make install`: bash benchmarks/run_endings.sh
K=".venv/bin/knowloc"
W=$(mktemp -d)
python3 - "$W" <<'PY'
import json, sys
subjects = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Brazil", "Canada"]
templates = {"R1": ["The capital of [X] is [Y].", "[X]'s capital city is [Y].", "The seat of government of [X] is [Y].",
                    "In [X], the capital is [Y]."],
             "R2": ["[X] is located in [Y].", "[X] lies on the continent of [Y].", "The continent of [X] is [Y].",
                    "[X] is a country in [Y]."]}
objects = {"R1": ["Paris", "Rome"], "R2": ["Europe", "Africa"]}
lines = [{"id": f"{r}-{k}", "relation": r, "subject": s, "object": objects[r][k % 2], "templates": t}
         for r, t in templates.items() for k, s in enumerate(subjects)]
open(f"{sys.argv[1]}/facts.jsonl", "w").write("\n".join(json.dumps(l) for l in lines) + "\n")
dup = lines + [{**lines[0], "id": "R1-0-again"}]
open(f"{sys.argv[1]}/dup.jsonl", "w").write("\n".join(json.dumps(l) for l in dup) + "\n")
open(f"{sys.argv[1]}/bom.jsonl", "w", encoding="utf-8-sig").write("\n".join(json.dumps(l) for l in lines) + "\n")
PY
BASE="--data $W/facts.jsonl --steps 3 --candidates --experiments consistency,modification --facts 5 --specificity-prompts 8 --no-progress"
ARGS="--model tiny-llama --methods ig $BASE"
row() {  # case, command..., prints: case | exit | stderr line(s) | directory after
  local name="$1" dir="$2"; shift 2
  "$@" > "$W/out.txt" 2> "$W/err.txt"; local rc=$?
  local err=$(grep -v "^\s*$" "$W/err.txt" | grep -v "Loading weights\|it/s\]" | tail -2 | tr '\n' ' ')
  local after=$( [ -e "$dir" ] && (ls -A "$dir" | tr '\n' ' ') || echo "(absent)")
  echo "| $name | $rc | ${err:-—} | $after |"
}
echo "| case | exit | stderr | directory after |"
echo "|---|---|---|---|"
row "clean study" $W/clean $K study $ARGS --out $W/clean
# SIGINT / SIGTERM on a real process, after the first units are stored
for sig in INT TERM; do
  $K study $ARGS --out $W/sig$sig > /dev/null 2> $W/sig.err & pid=$!
  for i in $(seq 1 600); do
    n=$(python3 -c "import sqlite3,sys; print(sqlite3.connect('file:$W/sig$sig/results.sqlite?mode=ro', uri=True).execute('select count(*) from attributions').fetchone()[0])" 2>/dev/null || echo 0)
    [ "${n:-0}" -ge 3 ] && break; sleep 0.2
  done
  kill -$sig $pid; wait $pid; rc=$?
  echo "| SIG$sig after $n attributions | $rc | $(grep -v '^\s*$' $W/sig.err | grep -v 'it/s\]' | tail -1) | $(ls -A $W/sig$sig | tr '\n' ' ') |"
  row "rerun after SIG$sig" $W/sig$sig $K study $ARGS --out $W/sig$sig
  python3 -c "import json; a=json.load(open('$W/clean/summary.json')); b=json.load(open('$W/sig$sig/summary.json')); print('| rerun summary.json equals the clean run (SIG$sig) |', a == b, '| | |')"
done
# damaged stores
for kind in flip truncate text; do
  mkdir -p $W/$kind; cp $W/clean/results.sqlite $W/clean/.knowloc-study $W/$kind/
  f=$W/$kind/results.sqlite; size=$(stat -c %s $f)
  case $kind in
    flip) python3 -c "p='$f'; b=bytearray(open(p,'rb').read()); b[$size//2]^=0xFF; open(p,'wb').write(b)";;
    truncate) truncate -s $((size/2)) $f;;
    text) echo "not a database" > $f;;
  esac
  row "store: $kind" $W/$kind $K study $ARGS --out $W/$kind
done
mkdir -p $W/notes; echo hi > $W/notes/notes.txt
row "directory with other files" $W/notes $K study $ARGS --out $W/notes
row "same with --force" $W/notes $K study $ARGS --out $W/notes --force
row "bad model, new directory" $W/bad $K study --model /nonexistent --methods ig $BASE --out $W/bad
row "then another setting" $W/bad $K study $ARGS --steps 2 --out $W/bad
# a second process while the first holds the lock
$K study --model tiny-llama --methods ig,amig,sig $BASE --facts 16 --steps 20 --out $W/lock > /dev/null 2>&1 & pid=$!
for i in $(seq 1 300); do [ -e $W/lock/results.sqlite ] && break; sleep 0.2; done; sleep 3
row "second process on a running study" $W/lock $K study --model tiny-llama --methods ig,amig,sig $BASE --facts 16 --steps 20 --out $W/lock
kill -INT $pid; wait $pid
row "duplicate fact under two ids" $W/dup $K probe --model tiny-llama --data $W/dup.jsonl --candidates
row "UTF-8 BOM" $W/bom $K probe --model tiny-llama --data $W/bom.jsonl --candidates
row "--threshold 1 (every KN set empty)" $W/thr $K study $ARGS --threshold 1 --out $W/thr
python3 -c "import json; s=json.load(open('$W/thr/summary.json')); print('| findings with --threshold 1 |', '; '.join(f\"{f['id']}: {f['verdict']} ({f['reason']})\" for f in s['findings'][:3]), '| | |')"
row "localize --top -3" $W/none $K localize --model tiny-llama --prompt "The capital of France is" --target Paris --top -3
row "localize --steps 100000" $W/none $K localize --model tiny-llama --prompt "The capital of France is" --target Paris --steps 100000
row "--specificity off (no reference units)" $W/off $K study $ARGS --specificity off --out $W/off
python3 -c "import sqlite3; print('| reference rows stored with --specificity off |', sqlite3.connect('$W/off/results.sqlite').execute('select count(*) from reference').fetchone()[0], '| | |')"
rm -rf "$W"
