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
# run NAME LIMIT ARGS...: one binary with a time limit, its log kept in $out
# (TAG=word names a variant run in the log and the summary)
run() {
  local name=$1 limit=$2; shift 2
  local log="$out/$name${TAG:+.$TAG}${1:+.${1#--}}.log" start=$(date +%s)
  echo "=== $name ${TAG:-} $*"
  timeout -s KILL "$limit" "$dir/$name" "$@" >"$log" 2>&1
  local rc=$?
  cat "$log"
  rows+=("$(printf '%-28s rc=%-3s %4ss  %s' "$name ${TAG:-}$*" "$rc" "$(( $(date +%s) - start ))" \
    "$(grep -E '^correctness:|checks,' "$log" | tr '\n' ' ')")")
}
for t in "$dir"/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  # the op tests' CPU oracle takes ~3 min for the MoE and FP8 cases
  run "$name" "$([ "$name" = test_backend_ops ] && echo 400 || echo "${LIMIT:-150}")"
  [ "$name" = test_backend_ops ] && run "$name" "${PERF_LIMIT:-300}" --perf
  # the forms kept to measure (docs/operations.md): dense FP8 GEMVs through
  # shared memory, the grouped FP8 MoE blocks walking several weight blocks
  if [ "$name" = test_backend_ops ]; then
    for op in matmul_fp8 moe_experts_fp8; do
      SL_CUDA_FP8_GEMV_CP=2 SL_CUDA_MOE_FP8_NPB=0 TAG=kept run "$name" 300 --filter $op
    done
    # without the FP8 codes made by the ops writing the activations (NOTES.md v42, on by default)
    for op in matmul_fp8 attention; do SL_CUDA_FP8_ACT=0 TAG=nofp8act run "$name" 300 --filter $op; done
    # with them for cuBLASLt's batches too (v110, off until measured: up to 64 rows)
    for op in matmul_fp8 attention; do SL_CUDA_FP8_ACT=2 TAG=fp8act2 run "$name" 300 --filter $op; done
    # the fused GDN decode step (v44, off until measured): its cases against the three ops
    SL_CUDA_GDN_FUSE=1 TAG=gdnfuse run "$name" 300 --filter gdn
    # the residual add + norm inside the router (v45, off until measured)
    SL_CUDA_ROUTER_NORM=1 TAG=routernorm run "$name" 200 --filter moe_router
  fi
  # every form written without a GPU at once (NOTES.md v42-v49), with the prefill
  # attention and MoE kernels the defaults replaced in v74 (k_attn_wg2, k_fp8_moe_wg)
  [ "$name" = test_engine_gpu ] && SL_CUDA_MOE_FP8_ONE=1 SL_CUDA_GDN_FUSE=1 SL_CUDA_ROUTER_NORM=1 \
    SL_CUDA_ATTN_WG=5 SL_CUDA_MOE_FP8_WG=2 TAG=blind run "$name" "${LIMIT:-150}"
  # every allocation NaN: a kernel reading memory nothing wrote fails the checks
  [ "$name" = test_engine_gpu ] && SL_CUDA_POISON=1 TAG=poisoned run "$name" "${LIMIT:-150}"
  # the paths the defaults replaced, still selectable (docs/operations.md)
  [ "$name" = test_engine_gpu ] && SL_CUDA_GDN_SPLIT=0 SL_CUDA_MOE_FP8_GROUPED=0 SL_CUDA_ATTN_FA2=0 \
    TAG=oldpaths run "$name" "${LIMIT:-150}"
  if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
    timeout -s KILL 200 compute-sanitizer --tool memcheck --print-limit 5 "$t" \
      >"$out/$name.memcheck.log" 2>&1
    rows+=("$(printf '%-28s memcheck rc=%s: %s' "$name" "$?" \
      "$(grep -E 'ERROR SUMMARY' "$out/$name.memcheck.log" | tail -1)")")
  fi
done
if [ -x "$dir/sluice" ]; then
  start=$(date +%s)
  python3 "$(dirname "$0")/check_model.py" "$dir" 2>&1 | tee "$out/check_model.log"
  rows+=("$(printf '%-28s rc=%-3s %4ss  %s' "check_model.py" "${PIPESTATUS[0]}" "$(( $(date +%s) - start ))" \
    "$(tail -1 "$out/check_model.log")")")
fi
echo
echo "==================== summary ===================="
grep -h '^PEAK' "$out"/*.log 2>/dev/null
grep -h '^PERF' "$out"/*.log 2>/dev/null | sed -E 's/^PERF +//; s/ +/ /g' | \
  awk '{ printf "%-100s\n", $0 }'
grep -h 'FAIL' "$out"/*.log 2>/dev/null | head -20
for r in "${rows[@]}"; do echo "$r"; done
