#!/usr/bin/env bash
# tests/gpu/profile_decode.sh BIN_DIR TOKENIZER_DIR MODEL: where a decode step's
# time goes, kernel by kernel, on the GPU machine. Serves MODEL (a config of
# tests/gpu/configs, dummy weights) and drives it at concurrency CONC (default
# 1) with `sluice bench` (1000 in / 400 out).
# With Nsight Systems on the machine: decode graphs on, DURATION seconds
# (default 4) of the steady decode recorded (from DELAY, default 3 s, after the
# bench starts), nsys's per-kernel summary printed (time share, launches,
# mean; launches over the steps recorded = kernels per step).
# Without it (the GPU machines have none): the worker's own kernel timing
# (SL_CUDA_PROFILE=1, graphs off, every launch bracketed by events: the sums
# exceed a real step, the shares hold), over the whole run, prefill included
# (its kernels are the tensor-core GEMM / FA2 / chunked rows); the table the
# worker logs at shutdown is printed.
set -uo pipefail
bin=${1:?BIN_DIR}; tok=${2:?TOKENIZER_DIR}; name=${3:?MODEL}
out=${OUT:-/tmp}
conc=${CONC:-1}
here=$(cd "$(dirname "$0")" && pwd)
nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
export NCCL_NVLS_ENABLE=0 LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
port=30121
dir=/tmp/sluice-prof-$name
rm -rf "$dir" && mkdir -p "$dir"
cp "$here/configs/$name/config.json" "$dir/"
cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$dir/"
serve=("$bin/sluice" serve --model "$dir" --load-format dummy --device cuda --port $port --page-size 16
  --mem-fraction-static 0.85 --max-running-requests 64 --context-length 4096 ${EXTRA:-})
bench=("$bin/sluice" bench --port $port --tokenizer "$dir" --num-prompts $((conc * 4))
  --max-concurrency "$conc" --random-input-len 1000 --random-output-len 400 --random-range-ratio 1)
# until the server ($pid) has a live worker; exits when it died
wait_up() {
  for _ in $(seq 1 240); do
    python3 -c "import urllib.request,json,sys; sys.exit(json.load(urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1))['workers_alive'] < 1)" 2>/dev/null && return
    kill -0 $pid 2>/dev/null || { echo "server exited"; tail -20 "$out/prof-serve-$name.log"; exit 1; }
    sleep 0.5
  done
}
if [ -z "$nsys" ]; then
  echo "profile_decode: no nsys on this machine: the worker's event timing (SL_CUDA_PROFILE=1)"
  SL_CUDA_PROFILE=1 "${serve[@]}" --disable-cuda-graph >"$out/prof-serve-$name.log" 2>&1 &
  pid=$!
  wait_up
  timeout 180 "${bench[@]}" >"$out/prof-bench-$name.txt" 2>&1
  grep -E "TPOT|TTFT|throughput" "$out/prof-bench-$name.txt" | head -6
  kill -INT $pid 2>/dev/null
  wait $pid 2>/dev/null
  grep "profile:" "$out/prof-serve-$name.log" | sed 's/.*profile: //' | head -${TOP:-40}
  exit 0
fi
# launched under an nsys session that records only between start and stop:
# the steady decode, after the load and the first prompts' prefill
sess=sluice-prof-$$
"$nsys" launch --session-new "$sess" --trace cuda --cuda-graph-trace node --trace-fork-before-exec true \
  "${serve[@]}" >"$out/prof-serve-$name.log" 2>&1 &
pid=$!
wait_up
timeout 120 "${bench[@]}" >"$out/prof-bench-$name.txt" 2>&1 &
bpid=$!
sleep "${DELAY:-3}"
"$nsys" start --session "$sess" -o "$out/prof-$name" --force-overwrite true
sleep "${DURATION:-4}"
"$nsys" stop --session "$sess"
wait $bpid
grep -E "TPOT|TTFT|throughput" "$out/prof-bench-$name.txt" | head -6
kill -INT $pid 2>/dev/null
wait $pid 2>/dev/null
"$nsys" shutdown --session "$sess" 2>/dev/null
rep=$(ls -t "$out"/prof-"$name"*.nsys-rep 2>/dev/null | head -1)
[ -n "$rep" ] || { echo "no report written"; tail -20 "$out/prof-serve-$name.log"; exit 1; }
"$nsys" stats --report cuda_gpu_kern_sum --format csv --output - "$rep" 2>/dev/null >"$out/prof-$name-kern.csv"
# Time(%), Total Time (ns), Instances, Avg (ns), ..., Name: the top 30, then the totals
python3 - "$out/prof-$name-kern.csv" "${DURATION:-4}" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r and r[0][:1].isdigit()]
total = sum(float(r[1]) for r in rows)
n = sum(int(r[2]) for r in rows)
print(f"{len(rows)} kernels, {n} launches, {total / 1e6:.1f} ms of kernel time in {sys.argv[2]} s")
for r in rows[:30]:
    print(f"{float(r[0]):5.1f}%  {float(r[1]) / 1e6:8.2f} ms  {int(r[2]):7d} x {float(r[3]) / 1e3:7.2f} us  {r[-1][:90]}")
PY
