# Sourced by the prepared GPU calls (gpu_check.sh, gpu_speed.sh): caches off the checkout, `K`, and `step NAME
# LIMIT_S CMD...`, which runs CMD under a time limit into $OUT/NAME.log and prints its rc, seconds and last lines.
mkdir -p "$OUT"
export KNOWLOC_CACHE=/tmp/knowloc-cache KNOWLOC_ATTRIBUTION_CACHE=/tmp/knowloc-attr KNOWLOC_COVARIANCE_CACHE=/tmp/knowloc-cov
K="python3 -m knowloc"
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"; tail -n "${TAIL:-4}" "$OUT/$name.log"; }
