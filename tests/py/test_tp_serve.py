"""Tensor-parallel worker groups on the CPU backend, real processes
(docs/parallel.md): `sluice serve --tp-size 2` streams the TP 1 server's
greedy text, keeps the prefix cache of a hybrid model, survives aborts; with
--dp-size 2 a SIGKILLed rank takes its group down and the router moves the
stream to the other group; a group split over two network namespaces (or two
loopback addresses when namespaces are not allowed) talks TCP; start-up
mistakes fail with a message naming them, and nothing waits forever.

Every rank loads its shard and the forward runs the collectives on the
group's comm ("Sharding" in docs/parallel.md): the outputs are still those of
TP 1. With SLUICE_GROUP_SYNC_ALL=1 every plan carries SYNC, so the barrier's
place among the forward's collectives is exercised on every step rather than
once per keep interval."""
import os
import shutil
import signal
import subprocess
import time

import openai
import pytest

from router_harness import (API_KEY, BIN, SLOW, Procs, children_of, cmdline, make_tiny, metrics,
                            read_log, reserve_port, start_router)

CTX = 256
PROMPTS = ["The history of the lighthouse keepers", "A recipe for bread with seeds"]


def client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                         max_retries=0, timeout=30 * SLOW)


def greedy(c, prompt, n, stream=False):
    return c.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0,
                                stream=stream, extra_body={"ignore_eos": True})


def stream_text(s):
    text, finish = "", None
    for ev in s:
        text += ev.choices[0].text
        finish = ev.choices[0].finish_reason or finish
    return text, finish


@pytest.fixture(scope="module")
def q3(model):
    """conftest's tiny qwen3 model, named beside qn."""
    return model


@pytest.fixture(scope="module")
def qn(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("m") / "tiny-next", arch="qwen3_next")


def serve(procs, model, *extra, alive=1):
    # a TP group answers heartbeats between steps: allow slow steps on a loaded CI box
    return start_router(procs, model, [], "--mem-bytes", 64 << 20, "--context-length", CTX,
                        "--dist-timeout", 3, "--dead-after-ms", 8000, *extra, command="serve",
                        alive=alive)


def worker(*args, env=None, timeout=20 * SLOW):
    """Runs `sluice worker ARGS` to its end: (exit code, stderr)."""
    r = subprocess.run([BIN, "worker", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    return r.returncode, r.stderr


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tp2_streams_the_tp1_text_and_aborts(procs, q3, monkeypatch):
    s1, p1 = serve(procs, q3)
    ref = {p: greedy(client(p1), p, 24).choices[0].text for p in PROMPTS}
    procs.stop(s1)
    monkeypatch.setenv("SLUICE_GROUP_SYNC_ALL", "1")
    s2, p2 = serve(procs, q3, "--tp-size", 2)
    ranks = [k for w in children_of(s2.pid) for k in [w, *children_of(w)]]
    assert len(ranks) == 2, ranks  # the leader and the rank it started
    c = client(p2)
    for p in PROMPTS:
        assert stream_text(greedy(c, p, 24, stream=True)) == (ref[p], "length")
    # a client that goes away mid-stream: the group drops the request
    s = greedy(c, PROMPTS[0], 200, stream=True)
    it = iter(s)
    for _ in range(3):
        next(it)
    s.response.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        m = metrics(p2)
        if sum(v for k, v in m.items() if k.startswith("sluice_worker_running")) == 0 and \
                sum(v for k, v in m.items() if k.startswith("sluice_worker_inflight")) == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the group never went idle after the abort")
    assert greedy(c, PROMPTS[1], 24).choices[0].text == ref[PROMPTS[1]]
    assert all(os.path.exists(f"/proc/{r}") for r in ranks)


def test_tp2_prefix_cache_hybrid(procs, qn, monkeypatch):
    monkeypatch.setenv("SLUICE_GROUP_SYNC_ALL", "1")
    _, port = serve(procs, qn, "--tp-size", 2, "--mamba-scheduler-strategy", "extra_buffer",
                    "--page-size", 4, "--mamba-track-interval", 8)
    c = client(port)
    # snapshots of the recurrent state sit at multiples of max(64, page) tokens
    prompt = " ".join(f"item {i}," for i in range(40))
    a = greedy(c, prompt, 8)
    b = greedy(c, prompt, 8)
    assert b.usage.prompt_tokens_details.cached_tokens >= 64, b.usage
    assert b.choices[0].text == a.choices[0].text
    longer = greedy(c, prompt + " fourteen fifteen", 8)
    assert longer.usage.prompt_tokens_details.cached_tokens >= 64, longer.usage


def test_killed_rank_moves_the_stream_to_the_other_group(procs, q3):
    s1, p1 = serve(procs, q3)
    n = 230  # long enough to outlast the detection (--dist-timeout 2)
    ref = greedy(client(p1), PROMPTS[0], n).choices[0].text
    procs.stop(s1)
    srv, port = serve(procs, q3, "--tp-size", 2, "--dp-size", 2, "--dist-timeout", 2 * SLOW, alive=2)
    c = client(port)
    s = greedy(c, PROMPTS[0], n, stream=True)
    it = iter(s)
    text = next(it).choices[0].text
    m = metrics(port)
    busy = [k.split('"')[1] for k, v in m.items()
            if k.startswith("sluice_worker_inflight") and v == 1]
    assert len(busy) == 1, m
    leader = next(w for w in children_of(srv.pid) if busy[0] in cmdline(w))
    follower = children_of(leader)[0]
    os.kill(follower, signal.SIGKILL)
    # the stream stalls while the group's death is detected and the request moves: that
    # stall (the longest gap between chunks), not the generation after it, is bounded
    rest, finish, last, stall = "", None, time.time(), 0.0
    for ev in it:
        now = time.time()
        stall, last = max(stall, now - last), now
        rest += ev.choices[0].text
        finish = ev.choices[0].finish_reason or finish
    assert stall < 20 * SLOW, stall
    # the group died with its rank; its leader went away and the router moved
    # the request, with what it had streamed, to the other group
    assert (text + rest, finish) == (ref, "length")
    assert metrics(port)["sluice_migrations_total"] >= 1
    for _ in range(100):
        if not os.path.exists(f"/proc/{leader}") or \
                open(f"/proc/{leader}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the leader outlived its group")
    assert srv.poll() is None  # the other group still serves
    again = greedy(c, PROMPTS[0], n).choices[0].text
    assert again == ref


def test_rank_death_fails_the_group_fast(tmp_path, q3):
    """Separate rank processes: a dead or stopped peer ends the other rank
    with an error within the timeout (idle group: the keep-alives notice)."""
    for victim, sig in ((1, signal.SIGKILL), (0, signal.SIGKILL), (1, signal.SIGSTOP)):
        addr = f"127.0.0.1:{reserve_port()}"
        args = ["--model", q3, "--listen", f"ipc://{tmp_path}/w{victim}{int(sig)}.ipc",
                "--mem-bytes", 64 << 20, "--context-length", CTX, "--tp-size", 2,
                "--dist-init-addr", addr, "--dist-timeout", 2]
        ps = [subprocess.Popen([BIN, "worker", *map(str, args), "--tp-rank", str(r)],
                               stderr=subprocess.PIPE, text=True) for r in range(2)]
        try:
            time.sleep(1.5)  # joined, loaded, idle
            assert all(p.poll() is None for p in ps), [p.stderr.read() for p in ps]
            ps[victim].send_signal(sig)
            other = ps[1 - victim]
            rc = other.wait(10)
            err = other.stderr.read()
            assert rc == 1 and "tensor-parallel group" in err, (victim, sig, rc, err)
        finally:
            for p in ps:
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                p.wait()


def test_bad_group_input(tmp_path, q3):
    # unparseable address: a usage error naming the flag
    rc, err = worker("--model", q3, "--listen", "ipc:///tmp/x.ipc", "--tp-size", 2,
                     "--dist-init-addr", "nohost")
    assert rc == 2 and "--dist-init-addr" in err, err
    rc, err = worker("--model", q3, "--listen", "ipc:///tmp/x.ipc", "--tp-size", 2)
    assert rc == 2 and "--dist-init-addr" in err, err
    rc, err = worker("--model", q3, "--tp-size", 4, "--nnodes", 3, "--dist-init-addr", "a:1")
    assert rc == 2 and "--nnodes" in err, err
    # unreachable rank 0
    rc, err = worker("--model", q3, "--tp-size", 2, "--tp-rank", 1, "--dist-init-addr",
                     f"127.0.0.1:{reserve_port()}", "--dist-timeout", 1)
    assert rc == 1 and "cannot reach --dist-init-addr" in err, err
    # a rank that never arrives
    rc, err = worker("--model", q3, "--listen", f"ipc://{tmp_path}/a.ipc", "--tp-size", 2,
                     "--tp-rank", 0, "--dist-init-addr", f"127.0.0.1:{reserve_port()}",
                     "--dist-timeout", 1)
    assert rc == 1 and "rank 1 never arrived" in err, err
    # ranks started with different flags
    addr = f"127.0.0.1:{reserve_port()}"
    base = ["--model", q3, "--tp-size", 2, "--dist-init-addr", addr, "--dist-timeout", 5,
            "--mem-bytes", 64 << 20]
    p0 = subprocess.Popen([BIN, "worker", *map(str, base), "--listen", f"ipc://{tmp_path}/b.ipc",
                           "--tp-rank", "0"], stderr=subprocess.PIPE, text=True)
    rc, err = worker(*base, "--tp-rank", 1, "--page-size", 4)
    err0 = p0.communicate(timeout=20 * SLOW)[1]
    assert rc == 1 and p0.returncode == 1
    assert "fingerprint mismatch" in err + err0 and "page=4" in err + err0, (err, err0)


def test_tp_size_not_dividing_the_model(procs, q3):
    rc, err = worker("--model", q3, "--listen", "ipc:///tmp/x.ipc", "--tp-size", 3,
                     "--dist-init-addr", f"127.0.0.1:{reserve_port()}", "--dist-timeout", 5)
    # the message names the flag and the model dimension it does not divide
    assert rc == 1 and "--tp-size 3" in err and "does not divide num_attention_heads 4" in err, err


# ---- two "nodes" ------------------------------------------------------------------

def sh(*cmd):
    return subprocess.run(list(cmd), capture_output=True, text=True)


def make_netns(tag):
    """Namespaces n0 (rank 0), n1 (rank 1), r (router): veth n0-n1 on
    10.213.0.0/24 and n0-r on 10.213.1.0/24, addresses only inside them.
    Returns the namespace names, or None (with the reason printed)."""
    names = [f"sl{tag}n0", f"sl{tag}n1", f"sl{tag}r"]
    if not shutil.which("ip"):
        print("network namespaces unavailable: no `ip` command; using loopback addresses")
        return None
    r = sh("ip", "netns", "add", names[0])
    if r.returncode:
        print(f"network namespaces unavailable ({r.stderr.strip()}); using 127.0.0.2/127.0.0.3")
        return None
    steps = [("ip", "netns", "add", names[1]), ("ip", "netns", "add", names[2])]
    links = [(names[0], names[1], f"vs{tag}a", f"vs{tag}b", "10.213.0.1", "10.213.0.2"),
             (names[0], names[2], f"vs{tag}c", f"vs{tag}d", "10.213.1.1", "10.213.1.2")]
    for a, b, la, lb, ia, ib in links:
        steps += [("ip", "link", "add", la, "type", "veth", "peer", "name", lb),
                  ("ip", "link", "set", la, "netns", a), ("ip", "link", "set", lb, "netns", b),
                  ("ip", "-n", a, "addr", "add", f"{ia}/24", "dev", la),
                  ("ip", "-n", b, "addr", "add", f"{ib}/24", "dev", lb),
                  ("ip", "-n", a, "link", "set", la, "up"), ("ip", "-n", b, "link", "set", lb, "up")]
    steps += [("ip", "-n", n, "link", "set", "lo", "up") for n in names]
    for s in steps:
        r = sh(*s)
        if r.returncode:
            drop_netns(names)
            print(f"network namespaces unavailable ({' '.join(s)}: {r.stderr.strip()}); "
                  "using 127.0.0.2/127.0.0.3")
            return None
    return names


def drop_netns(names):
    for n in names:
        sh("ip", "netns", "del", n)


def test_two_nodes_over_tcp(tmp_path, q3):
    ref_p = Procs()
    try:
        s1, p1 = serve(ref_p, q3)
        ref = greedy(client(p1), PROMPTS[1], 16).choices[0].text
    finally:
        ref_p.stop()
    tag = str(os.getpid() % 100000)
    ns = make_netns(tag)
    if ns:
        print("two nodes: network namespaces", ns)
        pre = [["ip", "netns", "exec", n] for n in ns]
        lead, addr, link = "10.213.0.1", "10.213.0.1:29500", "tcp://10.213.1.1:30000"
    else:
        pre = [[], [], []]
        lead, addr, link = "127.0.0.2", f"127.0.0.2:{reserve_port('127.0.0.2')}", f"tcp://127.0.0.2:{free_port()}"
    env = {**os.environ, "SLUICE_COMM_TRANSPORT": "tcp", "SLUICE_LOG": "info"}
    common = ["--model", q3, "--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr,
              "--mem-bytes", str(64 << 20), "--context-length", str(CTX), "--dist-timeout", "5"]
    logs = [open(tmp_path / f"{i}.log", "w+") for i in range(3)]
    ps = []
    try:
        ps.append(subprocess.Popen(pre[0] + [BIN, "worker", *common, "--node-rank", "0",
                                             "--listen", link], env=env, stdout=logs[0],
                                   stderr=subprocess.STDOUT, start_new_session=True))
        ps.append(subprocess.Popen(pre[1] + [BIN, "worker", *common, "--node-rank", "1"], env=env,
                                   stdout=logs[1], stderr=subprocess.STDOUT,
                                   start_new_session=True))
        port = 18000 + os.getpid() % 1000
        ps.append(subprocess.Popen(pre[2] + [BIN, "router", "--model-path", q3, "--port",
                                             str(port), "--host", "127.0.0.1",
                                             "--served-model-name", "tiny", "--api-key", API_KEY,
                                             "--worker", link], stdout=logs[2],
                                   stderr=subprocess.STDOUT, start_new_session=True))
        body = ('{"model":"tiny","prompt":"%s","max_tokens":16,"temperature":0,'
                '"ignore_eos":true}' % PROMPTS[1])
        curl = pre[2] + ["curl", "-s", "-m", "10", f"http://127.0.0.1:{port}/v1/completions",
                         "-H", f"Authorization: Bearer {API_KEY}", "-H",
                         "Content-Type: application/json", "-d", body]
        out = ""
        for _ in range(100):
            out = sh(*curl).stdout
            if '"text"' in out:
                break
            time.sleep(0.2)
        import json
        assert json.loads(out)["choices"][0]["text"] == ref, out
        for f in logs[:2]:
            assert "tcp transport" in read_log(f)
    finally:
        for p in ps:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in ps:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if ns:
            drop_netns(ns)
        for i, f in enumerate(logs):
            f.seek(0)
            print(f"--- log {i}\n" + f.read()[-3000:])
