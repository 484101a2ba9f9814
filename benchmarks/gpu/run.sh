#!/usr/bin/env bash
# The first GPU hour, in one call: build, GPU tests, every benchmark family on CUDA with its
# roofline, results under benchmarks/results/<gpu name>/ — time-boxed to 10 minutes in all.
#
#   bash benchmarks/gpu/run.sh --plan          what it would run, in order, with time limits (no GPU needed)
#   bash benchmarks/gpu/run.sh                 run it (needs an NVIDIA GPU, torch and triton installed)
#
# Options: --out DIR (default benchmarks/results/<sanitised torch.cuda.get_device_name()>),
# --quick (the benchmark harness's --quick sweep). Environment: PYTHON (default .venv/bin/python
# if present, else python3); DALLE2_FAST_EXTENSION_PATH=<a prebuilt dalle2_fast_C.so with CUDA
# kernels> skips the build; OUT (set by a remote runner) also receives a copy of the results after
# every step, so a step that runs out of time still leaves the earlier ones.
# Each step runs under `timeout`; one that fails or times out is recorded in summary.tsv and the
# next step still runs. Nothing here reaches the network (pip --no-deps --no-build-isolation).
set -u
cd "$(dirname "$0")/../.."

PLAN=0
QUICK=""
RES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --plan) PLAN=1 ;;
    --quick) QUICK="--quick" ;;
    --out) RES="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (expected --plan, --quick, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-}"
[ -z "$PY" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
[ -z "$PY" ] && PY=python3

# name | limit (s) | estimate (s, a guess until the first run replaces it) | command
STEPS=(
  "env|20|5|nvidia-smi; \$PY -m dalle2_fast.info --gpu-plan"
  "build|180|120|DALLE2_FAST_CUDA=1 DALLE2_FAST_MAX_JOBS=\$(nproc) \$PY -m pip install -q --no-deps --no-build-isolation -e ."
  "gpu-tests|120|60|\$PY -m pytest -m gpu -q -p no:cacheprovider tests --junitxml=\$RES/pytest-gpu.xml"
  "bench-codebook|25|15|\$PY -m dalle2_fast.bench --device cuda --ops codebook \$QUICK --out \$RES/codebook"
  "bench-attention|70|45|\$PY -m dalle2_fast.bench --device cuda --ops attention \$QUICK --out \$RES/attention"
  "bench-adagn|50|35|\$PY -m dalle2_fast.bench --device cuda --ops adagn \$QUICK --out \$RES/adagn"
  "bench-sampling|30|20|\$PY -m dalle2_fast.bench --device cuda --ops sampling \$QUICK --out \$RES/sampling"
  "bench-unet|40|25|\$PY -m dalle2_fast.bench --device cuda --ops unet \$QUICK --out \$RES/unet"
  "bench-vqvae2|30|20|\$PY -m dalle2_fast.bench --device cuda --ops vqvae2 \$QUICK --out \$RES/vqvae2"
  "bench-unclip|30|20|\$PY -m dalle2_fast.bench --device cuda --ops unclip \$QUICK --out \$RES/unclip"
)
TOTAL_LIMIT=600
# Families left out of the first ten minutes, with the reason (--plan lists them; a second call runs them)
LATER=(
  "unclip-peers|ours vs diffusers at reduced Karlo widths: both pipelines built and warmed, several minutes; a second GPU call"
  "caches|the prior caches against DALLE2-pytorch in its own .venv-peers (make peers), not built on a bare GPU machine"
  "serve|an HTTP service's throughput on loopback: batching and queueing, measured on the CPU machine"
)

if [ "$PLAN" = 1 ]; then
  [ -z "$RES" ] && RES="benchmarks/results/<gpu name>"
  echo "plan: $((${#STEPS[@]})) steps, results in $RES/ (python: $PY)"
  n=0; limit=0; est=0
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name lim e cmd <<< "$s"
    n=$((n + 1)); limit=$((limit + lim)); est=$((est + e))
    if [ "$name" = build ] && [ -n "${DALLE2_FAST_EXTENSION_PATH:-}" ]; then
      cmd="skipped: DALLE2_FAST_EXTENSION_PATH=$DALLE2_FAST_EXTENSION_PATH"
    fi
    cmd="${cmd//\$QUICK/$QUICK}"; cmd="${cmd//\$RES/$RES}"; cmd="${cmd//\$PY/$PY}"; cmd="${cmd//  / }"
    printf 'STEP %d %s limit=%ss estimate=%ss: %s\n' "$n" "$name" "$lim" "$e" "$cmd"
  done
  printf 'TOTAL limit=%ss estimate=%ss (must stay under %ss)\n' "$limit" "$est" "$TOTAL_LIMIT"
  for s in "${LATER[@]}"; do
    IFS='|' read -r name why <<< "$s"
    printf 'LATER bench-%s: %s\n' "$name" "$why"
  done
  [ "$limit" -le "$TOTAL_LIMIT" ] || { echo "plan exceeds ${TOTAL_LIMIT}s" >&2; exit 1; }
  exit 0
fi

GPU=$("$PY" -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name())" 2>/dev/null) || {
  echo "run.sh: no CUDA GPU visible to $PY (with torch); nothing run. Try --plan." >&2; exit 2; }
SAFE=$(printf '%s' "$GPU" | tr '[:upper:]' '[:lower:]' | sed -e 's/[^a-z0-9.]\+/-/g' -e 's/^-//' -e 's/-$//')
[ -z "$RES" ] && RES="benchmarks/results/$SAFE"
mkdir -p "$RES/logs"
echo -e "step\tstatus\tseconds\tlimit" > "$RES/summary.tsv"
export PY RES QUICK
START=$(date +%s)

mirror() {  # a copy for a remote runner that only returns $OUT
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/$RES" && cp -r "$RES/." "$OUT/$RES/"; fi
}

for s in "${STEPS[@]}"; do
  IFS='|' read -r name lim e cmd <<< "$s"
  left=$((TOTAL_LIMIT - ($(date +%s) - START)))
  if [ "$name" = build ] && [ -n "${DALLE2_FAST_EXTENSION_PATH:-}" ]; then
    echo -e "$name\tskipped (prebuilt $DALLE2_FAST_EXTENSION_PATH)\t0\t$lim" >> "$RES/summary.tsv"; continue
  fi
  if [ "$left" -le 5 ]; then echo -e "$name\tnot run (10-minute budget spent)\t0\t$lim" >> "$RES/summary.tsv"; continue; fi
  [ "$lim" -gt "$left" ] && lim=$left
  echo "== $name (limit ${lim}s): $cmd"
  t0=$(date +%s)
  timeout --kill-after=10 "$lim" bash -c "$cmd" > "$RES/logs/$name.log" 2>&1
  rc=$?
  dt=$(($(date +%s) - t0))
  case $rc in
    0) st=ok ;;
    124|137) st="timed out" ;;
    *) st="failed (rc $rc)" ;;
  esac
  echo "   $st in ${dt}s (log: $RES/logs/$name.log)"
  tail -n 3 "$RES/logs/$name.log" | sed 's/^/   | /'
  echo -e "$name\t$st\t$dt\t$lim" >> "$RES/summary.tsv"
  [ "$name" = env ] && cp "$RES/logs/env.log" "$RES/env.txt"
  mirror
done

{
  echo "# $GPU: first GPU run"
  echo
  echo "Commit $(git rev-parse HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - START)) s in all."
  echo "Steps (benchmarks/gpu/run.sh; logs/ has each step's output):"
  echo
  echo '| step | status | seconds | limit |'
  echo '|---|---|---|---|'
  tail -n +2 "$RES/summary.tsv" | awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}'
  echo
  echo "Each family's results.md lists every variant's time next to its roofline (published peaks of this GPU,"
  echo "dalle2_fast/bench/roofline.py) and the fraction of it reached."
} > "$RES/README.md"
mirror
echo "results in $RES/"
