#!/usr/bin/env bash
# tests/gpu/bench_e2e.sh BIN_DIR TOKENIZER_DIR [MODEL ...]: end-to-end serving
# benchmarks on the GPU machine: `sluice serve` (router + one CUDA worker,
# dummy bf16 weights at the real model shapes in tests/gpu/configs/) driven by
# `sluice bench` (sglang.bench_serving's random dataset, fixed lengths),
# 1000 input / 1000 output tokens at concurrency 1 and 64. Logs and JSON lines
# go to $OUT (or /tmp); a summary table is printed last.
#   ISL / OSL: input / output tokens per prompt (defaults 1000 / 1000; the
#   context length is sized to fit, at least 4096), e.g. ISL=8000 CONCS=16 for
#   the long-prompt yardstick (DESIGN.md: its P99 ITL shows what chunked
#   prefill leaves to the decodes sharing its steps)
#   NUM1 / NUM64: prompts at concurrency 1 / 64 (defaults 4 / 128). The bench
#   flushes the server's prefix cache after its warm-up (--flush-cache): the
#   warm-up's prompt is the first measured one, which would otherwise start
#   as a cache hit
#   CONCS: concurrencies to run (default "1 64"); EXTRA: more serve flags
#   (e.g. --disable-cuda-graph); BENCH_EXTRA: a JSON object added to every request
#   (bench --extra-request-body), e.g. '{"regex": "[a-z ]+"}' to measure
#   constrained decoding against the same run without it. Workers log decode step timing (device busy
#   time and idle gaps between steps, --step-timing); the last such line per
#   model is printed with the summary.
set -uo pipefail
bin=${1:?BIN_DIR}; tok=${2:?TOKENIZER_DIR}; shift 2
models=${*:-qwen3-8b qwen3-30b-a3b}
out=${OUT:-/tmp}
export NCCL_NVLS_ENABLE=0 LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
here=$(cd "$(dirname "$0")" && pwd)
port=30111
isl=${ISL:-1000}; osl=${OSL:-1000}
ctx=$(( (isl + osl + 128 + 1023) / 1024 * 1024 )); [ $ctx -lt 4096 ] && ctx=4096
summary=()
for name in $models; do
  dir=/tmp/sluice-bench-$name
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$here/configs/$name/config.json" "$dir/"
  cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$dir/"
  log=$out/serve-$name.log
  start=$(date +%s)
  "$bin/sluice" serve --model "$dir" --load-format dummy --device cuda --port $port \
    --page-size 16 --mem-fraction-static ${MEMFRAC:-0.9} --chunked-prefill-size 4096 \
    --max-running-requests 64 --context-length $ctx --step-timing ${EXTRA:-} >"$log" 2>&1 &
  pid=$!
  ok=0
  for _ in $(seq 1 240); do
    if python3 -c "import urllib.request,json,sys; sys.exit(json.load(urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1))['workers_alive'] < 1)" 2>/dev/null; then ok=1; break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
  done
  if [ $ok != 1 ]; then
    echo "=== $name: server did not come up"; tail -20 "$log"
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
    summary+=("$(printf '%-16s server failed to start' "$name")")
    continue
  fi
  echo "=== $name up after $(( $(date +%s) - start )) s"; grep -E "KV pool|loaded|weights" "$log" | head -3
  for conc in ${CONCS:-1 64}; do
    n=$([ $conc = 1 ] && echo ${NUM1:-4} || echo ${NUM64:-128})
    res=$out/bench-$name-c$conc.txt
    timeout ${BENCH_LIMIT:-240} "$bin/sluice" bench --port $port --tokenizer "$dir" --num-prompts $n \
      --max-concurrency $conc --random-input-len $isl --random-output-len $osl \
      --random-range-ratio 1 --flush-cache --output-file "$out/bench-$name.jsonl" \
      ${BENCH_EXTRA:+--extra-request-body "$BENCH_EXTRA"} >"$res" 2>&1
    rc=$?
    cat "$res"
    pick() { grep -E "^$1" "$res" | head -1 | awk -F: '{gsub(/ /,"",$2); print $2}'; }
    summary+=("$(printf '%-16s %s/%s c=%-3s n=%-4s rc=%-3s out tok/s %-10s TTFT mean %-9s median %-9s ms  TPOT mean %-8s ms  median %-8s ms  P99 ITL %-8s ms' \
      "$name" "$isl" "$osl" "$conc" "$n" "$rc" "$(pick 'Output token throughput')" "$(pick 'Mean TTFT')" \
      "$(pick 'Median TTFT')" "$(pick 'Mean TPOT')" "$(pick 'Median TPOT')" "$(pick 'P99 ITL')")")
  done
  if [ -n "${BENCH_EXTRA:-}" ]; then # proof the extra body was honoured: one answer, shown
    sample=$(python3 - "$port" "$BENCH_EXTRA" <<'PY'
import json, sys, urllib.request
port, extra = sys.argv[1], json.loads(sys.argv[2])
model = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models"))["data"][0]["id"]
body = {"model": model, "prompt": "Say something.", "max_tokens": 48, "temperature": 1.0, **extra}
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
print(json.dumps(json.load(urllib.request.urlopen(req, timeout=60))["choices"][0]["text"]))
PY
)
    summary+=("$(printf '%-16s with %s: %s' "$name" "$BENCH_EXTRA" "${sample:0:120}")")
  fi
  kill $pid; wait $pid 2>/dev/null
  gaps=$(grep "decode steps" "$log" | tail -1 | sed 's/.*decode steps/decode steps/')
  summary+=("$(printf '%-16s %s' "$name" "${gaps:-no step timing logged}")")
  # the prompts' forward alone (one prompt of $isl tokens a step: concurrency 1), beside their TTFT
  pre=$(grep -E "prefill step: $isl tokens of 1 sequences" "$log" | sed -E 's/.*device ([0-9.]+) ms.*/\1/' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) printf "%d steps, median device %.2f ms", NR, v[int((NR + 1) / 2)] }')
  summary+=("$(printf '%-16s prefill steps of %s tokens alone: %s' "$name" "$isl" "${pre:-none logged}")")
done
echo
echo "==================== e2e summary ===================="
nvidia-smi --query-gpu=name --format=csv,noheader
for r in "${summary[@]}"; do echo "$r"; done
