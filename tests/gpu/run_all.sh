#!/usr/bin/env bash
# tests/gpu/run_all.sh BIN_DIR: every GPU check and benchmark in one call, for
# the GPU machine (which runs prebuilt binaries: build here, ship BIN_DIR).
# Runs each BIN_DIR/test_* (test_backend_ops also with --perf), keeps full
# logs under $OUT (or /tmp), and prints a short summary table LAST.
#   SANITIZE=1  also runs the correctness pass under compute-sanitizer memcheck
set -uo pipefail
dir=${1:-build/bin}
out=${OUT:-/tmp}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem \
  --format=csv | tee "$out/device.txt"
declare -a rows
for t in "$dir"/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  args=""
  [ "$name" = test_backend_ops ] && args="--perf"
  echo "=== $name $args"
  start=$(date +%s)
  "$t" $args >"$out/$name.log" 2>&1
  rc=$?
  cat "$out/$name.log"
  rows+=("$(printf '%-22s rc=%-3s %4ss  %s' "$name" "$rc" "$(( $(date +%s) - start ))" \
    "$(grep -E '^correctness:|checks,' "$out/$name.log" | tr '\n' ' ')")")
  if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --tool memcheck --print-limit 5 "$t" >"$out/$name.memcheck.log" 2>&1
    rows+=("$(printf '%-22s memcheck rc=%s: %s' "$name" "$?" \
      "$(grep -E 'ERROR SUMMARY' "$out/$name.memcheck.log" | tail -1)")")
  fi
done
echo
echo "==================== summary ===================="
grep -h '^PEAK' "$out"/*.log 2>/dev/null
grep -h '^PERF' "$out"/*.log 2>/dev/null | sed -E 's/^PERF +//; s/ +/ /g' | \
  awk '{ printf "%-100s\n", $0 }'
grep -h 'FAIL' "$out"/*.log 2>/dev/null | head -20
for r in "${rows[@]}"; do echo "$r"; done
