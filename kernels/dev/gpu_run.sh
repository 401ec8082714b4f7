#!/usr/bin/env bash
# kernels/dev/gpu_run.sh BIN MODE...: a session's GPU calls in few seconds of setup, on
# binaries built here (BIN: a folder with sluice and the test_* binaries, or an .tar.xz of
# one as kernels/dev/pack.sh makes it, unpacked once into /tmp). Device time is scarce:
# each mode prints only its summary (full logs under $OUT, or /tmp) and its time.
#   check         every correctness binary and check_model.py at once (one GPU, ≈ 270 s on
#                 an H100; tests/gpu/run_all.sh runs them one by one, with the variants)
#   perf:OP[:N[:M]] test_backend_ops --perf --filter OP (--min-tokens N, --max-tokens M), its
#                 PERF lines (ab and prof take M too)
#   ops:OP[:CASE] test_backend_ops --filter OP (--case CASE: the cases whose shape starts
#                 with CASE's comma-separated numbers), its failures and counts
#   ab:OP[:N]     the same timings of test_backend_ops and of every variant packed beside it as
#                 NAME_tbo (kernels/dev/variants.sh's builds), two rounds alternating on the
#                 same card: one line a case with each binary's times (the PERF lines, each
#                 prefixed by its binary, in $OUT/ab_OP.txt)
#   vops:OP[:CASE] ops:OP[:CASE] for every NAME_tbo, one summary line each
#   prof:OP:N     the kernel table (SL_CUDA_PROFILE=1) of test_backend_ops and of every
#                 NAME_tbo at N tokens (--min-tokens N --max-tokens N)
#   probe:NAME:OP[:N[:M]] NAME_tbo's PROBE lines (a *_probe.py variant) at N tokens or more (and
#                 at most M)
#   e2e           tests/gpu/bench_e2e.sh on Qwen3-30B-A3B-FP8 and Qwen3-8B-FP8, 1000/1000
#   cn            the same on Qwen3-Coder-Next-FP8 (~80 GB of weights: an H200)
#   long64        Coder-Next-FP8 8000/1000 at concurrency 64 (an H200)
# VARIANTS="a b" limits ab, vops and prof to those NAME_tbo (default: every one packed).
# Environment variables (SL_CUDA_*) pass through to every binary, e.g. for A/B runs:
#   OUT=$OUT bash kernels/dev/gpu_run.sh .gpu/all.tar.xz perf:attention check
set -uo pipefail
cd "$(dirname "$0")/../.."
src=${1:?BIN}; shift
out=${OUT:-/tmp}
if [ -f "$src" ]; then # a tarball: unpacked once per content
  b=/tmp/gpu_run_$(cksum < "$src" | cut -d' ' -f1)
  [ -x "$b/sluice" ] || { mkdir -p "$b" && xz -dc "$src" | tar xf - -C "$b"; }
else
  b=$(cd "$src" && pwd)
fi
export NCCL_NVLS_ENABLE=0 LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
tok=tests/data/qwen3-tokenizer
# One binary's timings of op $op (from $min tokens; more flags after $2) or its op checks,
# the log under $out; each summary line prefixed by $2 (a variant's name, or nothing), the
# kernel table's lines where SL_CUDA_PROFILE=1 printed one
perf_of() {
  local log=$out/perf_${2:+${2% }_}$op.log
  timeout 300 "$1" --perf --filter "$op" ${min:+--min-tokens $min} ${max:+--max-tokens $max} "${@:3}" > "$log" 2>&1
  echo "${2}rc=$?"
  grep -E '^PEAK|^PERF|profile: ' "$log" | sed -E "s/^.*profile: /profile: /; s/^/$2/"
}
ops_of() {
  local log=$out/ops_${2:+${2% }_}$op.log
  timeout 300 "$1" --filter "$op" ${min:+--case $min} > "$log" 2>&1
  echo "${2}rc=$? $(grep correctness: "$log")"
  grep -h FAIL "$log" | head -5 | sed "s/^/$2/"
}
# the variant builds packed beside test_backend_ops (VARIANTS: only those)
variants() {
  local x
  for x in "$b"/*_tbo; do
    [ -x "$x" ] || continue
    [ -z "${VARIANTS:-}" ] || [[ " $VARIANTS " == *" $(basename "$x" _tbo) "* ]] || continue
    echo "$x"
  done
}
for mode in "$@"; do
  s=$(date +%s)
  echo "##### $mode"
  IFS=: read -r what op min max <<< "$mode"
  case $what in
  check)
    pids=()
    for x in test_backend_ops test_engine_gpu test_engine_gpu_cache test_model_trace; do
      [ -x "$b/$x" ] || continue
      ( timeout -s KILL "$([ $x = test_backend_ops ] && echo 420 || echo 200)" "$b/$x" > "$out/$x.log" 2>&1
        echo "$x rc=$?" > "$out/$x.rc" ) & pids+=($!)
    done
    ( timeout 300 python3 tests/gpu/check_model.py "$b" > "$out/check_model.log" 2>&1
      echo "check_model rc=$?" > "$out/check_model.rc" ) & pids+=($!)
    # by pid: a bare wait would also wait for a caller's tee
    for p in "${pids[@]}"; do wait "$p"; done
    for x in test_backend_ops test_engine_gpu test_engine_gpu_cache test_model_trace check_model; do
      [ -f "$out/$x.rc" ] || continue
      echo "$(cat "$out/$x.rc") $(grep -E '^correctness:|checks,|model checks' "$out/$x.log" | tail -1)"
      grep -h FAIL "$out/$x.log" | head -5
    done ;;
  perf) perf_of "$b/test_backend_ops" "" ;;
  ops) ops_of "$b/test_backend_ops" "" ;;
  ab)
    for r in 1 2; do
      for x in "$b/test_backend_ops" $(variants); do
        perf_of "$x" "$(basename "$x" _tbo) "
      done
    done > "$out/ab_$op.txt"
    grep -E 'PEAK' "$out/ab_$op.txt" | head -1
    grep -E 'rc=' "$out/ab_$op.txt" | grep -v 'rc=0$' # a binary that failed
    # the same timings, one line a case: each binary's milliseconds over the rounds
    echo "ab summary ($op):"
    awk '/ PERF / { b = $1; d = $0; sub(/^[^ ]+ PERF +/, "", d); sub(/ +[0-9.]+ ms .*/, "", d)
                    match($0, / ([0-9.]+) ms /); t = substr($0, RSTART + 1, RLENGTH - 5)
                    tag = ""; if (match($0, /(\[[^]]*\]|\([^)]*\))[^[(]*$/)) tag = substr($0, RSTART); sub(/ b2b.*/, "", tag)
                    k = d " " tag; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
                    v[k, b] = v[k, b] " " t; if (!((k, b) in bs)) { bs[k, b] = 1; bl[k] = bl[k] " " b } }
         END { for (i = 1; i <= n; i++) { k = order[i]; line = k ":"; m = split(bl[k], bb, " ")
                 for (j = 1; j <= m; j++) line = line "  " bb[j] v[k, bb[j]]; print line } }' "$out/ab_$op.txt" ;;
  vops)
    for x in $(variants); do
      ops_of "$x" "$(basename "$x" _tbo) "
    done ;;
  prof)
    for x in "$b/test_backend_ops" $(variants); do
      max=${max:-$min} SL_CUDA_PROFILE=1 perf_of "$x" "$(basename "$x" _tbo) "
    done ;;
  probe)
    IFS=: read -r _ name op min max <<< "$mode"
    timeout 200 "$b/${name}_tbo" --perf --filter "$op" ${min:+--min-tokens $min} ${max:+--max-tokens $max} \
      > "$out/probe_$name.log" 2>&1
    echo "rc=$?"
    grep PROBE "$out/probe_$name.log" | head -30 ;;
  e2e | cn | long64)
    case $what in
    e2e) models="qwen3-30b-a3b-fp8 qwen3-8b-fp8" ;;
    *) models=qwen3-coder-next-fp8 ;;
    esac
    if [ "$what" = long64 ]; then
      ISL=8000 CONCS=64 BENCH_LIMIT=400 bash tests/gpu/bench_e2e.sh "$b" "$tok" $models > "$out/$what.log" 2>&1
    else
      bash tests/gpu/bench_e2e.sh "$b" "$tok" $models > "$out/$what.log" 2>&1
    fi
    sed -n '/e2e summary/,$p' "$out/$what.log" ;;
  *) echo "gpu_run.sh: unknown mode $mode" ;;
  esac
  echo "##### $mode took $(( $(date +%s) - s )) s"
done
