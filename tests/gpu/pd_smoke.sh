#!/usr/bin/env bash
# tests/gpu/pd_smoke.sh BIN_DIR TOKENIZER_DIR [CONFIG]: prefill/decode disaggregation on one
# GPU (a prefill worker and a decode worker as two processes, each with part of the memory)
# against a unified worker: the same greedy completions, and the transfer counters from the
# decode side; once with the cache copied device to device (the default when both workers
# share the GPU) and once host staged over nng (--disaggregation-transfer-backend nng). Dummy
# weights at CONFIG's shape (default: Coder-Next at 8 of 48 layers, so two copies fit one GPU).
# The unified server runs twice first: whether two processes agree at all. With
# SL_CUDA_MM_TUNE=0 in the environment every process takes the same matmul kernels
# (docs/operations.md), which takes per-process kernel timing out of that comparison.
set -uo pipefail
bin=${1:?BIN_DIR}; tok=${2:?TOKENIZER_DIR}; cfg=${3:-qwen3-coder-next-8l}
here=$(cd "$(dirname "$0")" && pwd)
export NCCL_NVLS_ENABLE=0 LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
dir=/tmp/sluice-pd-$cfg; rm -rf "$dir"; mkdir -p "$dir"
cp "$here/configs/$cfg/config.json" "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$dir/"
common=(--model "$dir" --load-format dummy --device cuda --page-size 16 --context-length 4096
        --max-running-requests 16 --chunked-prefill-size 4096 --heartbeat-ms 1000 --dead-after-ms 60000)
run() { # NAME PORT FLAGS...: serve, 4 greedy completions of 2000-token prompts, metrics
  local name=$1 port=$2; shift 2
  "$bin/sluice" serve "${common[@]}" --port "$port" "$@" >"${OUT:-/tmp}/pd-$name.log" 2>&1 &
  local pid=$!
  python3 - "$port" "$name" <<'PY'
import json, os, sys, time, urllib.request, urllib.error
port, name = int(sys.argv[1]), sys.argv[2]
def health():
    try:
        return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2))
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}")
    except OSError:
        return {}
t0 = time.time()
def ready(h):
    return h.get("workers", 0) > 0 and h.get("workers_alive") == h.get("workers")
while not ready(health()):
    if time.time() - t0 > float(os.environ.get("READY_S", 240)):
        sys.exit(f"{name}: not ready after {time.time() - t0:.0f} s")
    time.sleep(0.5)
model = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5))["data"][0]["id"]
out = []
for i in range(4):
    body = {"model": model, "prompt": [(7 * i + j) % 5000 + 100 for j in range(2000)],
            "max_tokens": 32, "temperature": 0}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t = time.time()
    r = json.load(urllib.request.urlopen(req, timeout=60))
    out.append({"text": r["choices"][0]["text"], "s": round(time.time() - t, 3)})
time.sleep(2)  # the workers' counters reach the router with their next load report
m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
pd = [l for l in m.splitlines() if l.startswith("sluice_worker_pd_transfer")]
json.dump({"name": name, "out": out, "pd": pd}, open(f"/tmp/pd-{name}.json", "w"))
print(name, [o["s"] for o in out], *pd, sep="\n  ")
PY
  [ $? = 0 ] || { echo "$name: FAIL; the server's log ends:"; tail -40 "${OUT:-/tmp}/pd-$name.log"; }
  kill "$pid"; wait "$pid" 2>/dev/null
}
run unified 30211 --mem-fraction-static 0.4
run unified2 30214 --mem-fraction-static 0.4 # the same again: is the model itself deterministic here?
# the two workers share the card: each counts only its own weights and caches;
# pd copies the cache device to device (one GPU), pd-nng host staged over nng
run pd 30212 --pd-prefill 1 --pd-decode 1 --mem-fraction-static 0.4
run pd-nng 30213 --pd-prefill 1 --pd-decode 1 --mem-fraction-static 0.4 \
  --disaggregation-transfer-backend nng
grep -h "device to device" "${OUT:-/tmp}"/pd-pd.log | head -1
python3 - <<'PY'
import json
u = json.load(open("/tmp/pd-unified.json"))
for n in ("unified2", "pd", "pd-nng"):
    p = json.load(open(f"/tmp/pd-{n}.json"))
    same = [a["text"] == b["text"] for a, b in zip(u["out"], p["out"])]
    print(f"{n} outputs equal unified:", same, "->", "ok" if all(same) and len(same) == 4 else "FAIL")
    for a, b in zip(u["out"], p["out"]):
        if a["text"] != b["text"]:
            print(f"  unified {a['text'][:60]!r}\n  {n:7} {b['text'][:60]!r}")
PY
