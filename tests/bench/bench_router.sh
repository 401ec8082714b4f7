#!/usr/bin/env bash
# Router overhead: `sluice router` (pinned to one core) over one
# `sluice mock-worker` (no model: echoes the prompt, so every millisecond
# measured is HTTP + JSON + tokenizer + routing + nng), driven by wrk with
# max_tokens 1. Usage: tests/bench/bench_router.sh [build/bin/sluice] [seconds]
set -euo pipefail
bin=${1:-build/bin/sluice}
secs=${2:-10}
tok=${TOKENIZER:-$(cd "$(dirname "$0")/../data/qwen3-tokenizer" && pwd)}
dir=$(mktemp -d)
trap 'kill $(cat $dir/*.pid 2>/dev/null) 2>/dev/null; rm -rf $dir' EXIT
cat > $dir/completions.lua <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"tiny","prompt":"The quick brown fox jumps over the lazy dog","max_tokens":1}'
wrk.headers["Content-Type"] = "application/json"
LUA
cat > $dir/chat.lua <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"tiny","messages":[{"role":"user","content":"The quick brown fox jumps over the lazy dog"}],"max_tokens":1}'
wrk.headers["Content-Type"] = "application/json"
LUA
taskset -c 1 $bin mock-worker --listen ipc://$dir/m.ipc >/dev/null 2>&1 & echo $! > $dir/mock.pid
SLUICE_LOG=warn taskset -c 0 $bin router --model-path $tok --served-model-name tiny \
  --worker ipc://$dir/m.ipc --port 18199 >/dev/null 2>&1 & echo $! > $dir/router.pid
for _ in $(seq 100); do
  curl -sf localhost:18199/health | grep -q '"workers_alive":1' && break; sleep 0.1
done
run() { # name connections script path
  echo "== $1 (c=$2)"
  taskset -c 1 wrk -t1 -c$2 -d${secs}s --latency -s $dir/$3 http://127.0.0.1:18199$4 |
    grep -E "^\s+(50|99)%|Requests/sec|Non-2xx"
}
echo "== GET /health (c=32)"
taskset -c 1 wrk -t1 -c32 -d${secs}s --latency http://127.0.0.1:18199/health |
  grep -E "^\s+(50|99)%|Requests/sec"
run completions 1 completions.lua /v1/completions
run completions 32 completions.lua /v1/completions
run chat 1 chat.lua /v1/chat/completions
run chat 32 chat.lua /v1/chat/completions
