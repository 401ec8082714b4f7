"""The Kubernetes layouts of deploy/k8s run as processes on separate "hosts" (network
namespaces on one bridge, tests/py/netns.py; loopback addresses 127.0.0.X when namespaces
cannot be made, printed), over TCP, each started with the command line its manifest holds:
args rendered from the YAML the way Kubernetes does ($(VAR) from the ConfigMap, the
Secret, the downward API and, for the LeaderWorkerSet, LWS_LEADER_ADDRESS / LWS_GROUP_SIZE
/ LWS_WORKER_INDEX), the ConfigMap's values set for CI (a `sluice make-tiny` model,
DEVICE=cpu, GROUP_TP_SIZE=2 so each LWS pod runs one rank) and one flag added, --mem-bytes
(the CPU backend's cache budget). Service names resolve through each host's /etc/hosts, so
the router's --worker-dns finds both StatefulSet pods as a headless Service would.

single-node layout: the router, two StatefulSet workers; the host serving a stream is
taken away (link down, then its processes killed: no FIN arrives) and the stream ends with
the text an undisturbed run gives, on the other worker; new requests succeed.
multi-node layout: the router, two LeaderWorkerSet groups of TP 2 across two hosts each;
the follower host of the busy group is taken away; its leader gives up within
--dist-timeout, the router moves the stream to the other group; new requests succeed."""
import json
import os
import signal
import subprocess
import time

from deploy_manifests import config, find, load, render
from netns import Net
from router_harness import API_KEY, BIN, read_log

NS = "sluice"
PROMPT = "The history of the lighthouse keepers"
N = 400  # tokens of the stream that gets moved
CI_CONFIG = {"SERVED_MODEL_NAME": "tiny", "DEVICE": "cpu", "CONTEXT_LENGTH": "1024",
             "GROUP_TP_SIZE": "2", "DIST_TIMEOUT": "4"}
ADDED = ["--mem-bytes=67108864"]


class Hosts:
    """Namespaces when possible, else loopback addresses (0.0.0.0 listeners and Service
    names are then rewritten to each host's own address)."""

    def __init__(self, names, tmp):
        self.names, self.tmp = names, tmp
        # SLUICE_TEST_LOOPBACK=1 takes the fallback path on purpose (to test it)
        self.net = None if os.environ.get("SLUICE_TEST_LOOPBACK") else \
            Net.make(str(os.getpid() % 10000), names)
        self.procs, self.logs = {}, {}
        if self.net:
            print("hosts: network namespaces", sorted(self.net.ns.values()))
            self.addr = self.net.addr
        else:
            print("hosts: loopback addresses (no network namespaces)")
            self.addr = {h: f"127.0.0.{10 + i}" for i, h in enumerate(names)}
        self.dns = {}

    def resolve(self, h, names):
        self.dns[h] = names
        if self.net:
            self.net.hosts(h, names)

    def start(self, h, args, env=None):
        if not self.net:  # loopback: the same ports on different addresses
            args = [a.replace("0.0.0.0", self.addr[h]) for a in args]
            fixed = []
            for a in args:
                flag, _, val = a.partition("=")
                name = val.rsplit(":", 1)[0]
                if flag == "--worker-dns":
                    port = val.rsplit(":", 1)[1]
                    fixed += [f"--worker=tcp://{self.addr[x]}:{port}"
                              for x in self.dns[h][name]]
                    continue
                for n, hs in self.dns.get(h, {}).items():
                    a = a.replace(n, self.addr[hs[0]])
                fixed.append(a)
            args = fixed
        log = open(self.tmp / f"{h}.log", "w+")
        pre = self.net.prefix(h) if self.net else []
        p = subprocess.Popen(pre + [BIN, *args], stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "SLUICE_LOG": "info", **(env or {})},
                             start_new_session=True)
        self.procs[h], self.logs[h] = p, log
        return p

    def take_away(self, h):
        if self.net:
            self.net.take_away(h)
        else:
            os.killpg(self.procs[h].pid, signal.SIGKILL)

    def curl(self, h, *args):
        pre = self.net.prefix(h) if self.net else []
        return pre + ["curl", "-s", "-H", f"Authorization: Bearer {API_KEY}", *args]

    def url(self, h, path):
        return f"http://{self.addr[h] if not self.net else '127.0.0.1'}:30000{path}"

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            p.wait()
        if self.net:
            self.net.drop()
        for h, f in self.logs.items():
            f.seek(0)
            print(f"--- {h}\n" + f.read()[-2500:])


def container(docs, kind, name, part=None):
    d = find(docs, kind, name)
    if kind == "LeaderWorkerSet":
        t = d["spec"]["leaderWorkerTemplate"][part]
    else:
        t = d["spec"]["template"]
    return t["spec"]["containers"][0]


def env_of(docs, model, **extra):
    return {**config(docs), **CI_CONFIG, "MODEL_PATH": model, "POD_NAMESPACE": NS,
            "SLUICE_API_KEY": API_KEY, **extra}


def complete(hosts, h, n, stream=False):
    body = json.dumps({"model": "tiny", "prompt": PROMPT, "max_tokens": n, "temperature": 0,
                       "ignore_eos": True, "stream": stream})
    return hosts.curl(h, "-N", "-m", "60", hosts.url(h, "/v1/completions"), "-H",
                      "Content-Type: application/json", "-d", body)


def text_of(out):
    return json.loads(out)["choices"][0]["text"]


def wait_ready(hosts, h, alive, deadline):
    while time.time() < deadline:
        m = metrics(hosts, h)
        if sum(v for k, v in m.items() if k.startswith("sluice_worker_up")) >= alive:
            return
        time.sleep(0.3)
    raise AssertionError(f"{h}: fewer than {alive} workers up: {metrics(hosts, h)}")


def metrics(hosts, h):
    out = subprocess.run(hosts.curl(h, "-m", "5", hosts.url(h, "/metrics")),
                         capture_output=True, text=True).stdout
    m = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                m[k] = float(v)
            except ValueError:
                pass
    return m


def busy_worker(hosts, h):
    for _ in range(50):
        busy = [k.split('"')[1] for k, v in metrics(hosts, h).items()
                if k.startswith("sluice_worker_inflight") and v >= 1]
        if busy:
            return busy[0]
        time.sleep(0.05)
    raise AssertionError("no worker took the stream")


def stream_across_takeaway(hosts, router, victim_of, ref):
    """Starts a stream on router, takes away victim_of(busy worker URL) once tokens flow,
    returns (streamed text, finish reason)."""
    p = subprocess.Popen(complete(hosts, router, N, stream=True), stdout=subprocess.PIPE,
                         text=True)
    text, finish, taken = "", None, None
    for line in p.stdout:
        if not line.startswith("data: ") or line.strip() == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        assert "error" not in ev, ev
        text += ev["choices"][0]["text"]
        finish = ev["choices"][0].get("finish_reason") or finish
        if taken is None:
            taken = victim_of(busy_worker(hosts, router))
            hosts.take_away(taken)
            t0 = time.time()
    p.wait(60)
    assert taken, "the stream ended before a host could be taken away"
    print(f"took {taken} away; the stream finished {time.time() - t0:.1f} s later")
    return text, finish


def test_layouts_on_separate_hosts_survive_a_lost_host(tmp_path, model):
    t_start = time.time()
    hosts = Hosts(["r1", "w0", "w1", "r2", "g0l", "g0f", "g1l", "g1f"], tmp_path)
    try:
        docs = load()
        svc = lambda name: f"{name}.{NS}.svc.cluster.local"
        hosts.resolve("r1", {svc("sluice-worker"): ["w0", "w1"]})
        hosts.resolve("r2", {svc("sluice-tp-leader"): ["g0l", "g1l"]})
        # ---- single-node layout: router + StatefulSet pods sluice-worker-0/1
        r = container(docs, "Deployment", "sluice-router")
        w = container(docs, "StatefulSet", "sluice-worker")
        for h in ("w0", "w1"):
            hosts.start(h, render(w["args"], env_of(docs, model)) + ADDED)
        hosts.start("r1", render(r["args"], env_of(docs, model)))
        # ---- multi-node layout: router + LeaderWorkerSet sluice-tp, replicas 2, size 2
        mr = container(load("common") + load("multi-node"), "Deployment", "sluice-router")
        for g in (0, 1):
            leader_name = f"sluice-tp-{g}.sluice-tp.{NS}"  # what LWS puts in LWS_LEADER_ADDRESS
            for i, part in ((0, "leaderTemplate"), (1, "workerTemplate")):
                h = f"g{g}{'lf'[i]}"
                hosts.resolve(h, {leader_name: [f"g{g}l"]})
                c = container(docs, "LeaderWorkerSet", "sluice-tp", part)
                e = env_of(docs, model, LWS_LEADER_ADDRESS=leader_name, LWS_GROUP_SIZE=2,
                           LWS_WORKER_INDEX=i)
                # separate hosts share this machine's hostname and boot id: make the group
                # use TCP as ranks on different nodes do
                hosts.start(h, render(c["args"], e) + ADDED, env={"SLUICE_COMM_TRANSPORT": "tcp"})
        hosts.start("r2", render(mr["args"], env_of(docs, model)))
        deadline = time.time() + 40
        wait_ready(hosts, "r1", 2, deadline)
        wait_ready(hosts, "r2", 2, deadline)
        ref = text_of(subprocess.run(complete(hosts, "r1", N), capture_output=True,
                                     text=True).stdout)
        assert text_of(subprocess.run(complete(hosts, "r2", N), capture_output=True,
                                      text=True).stdout) == ref  # TP 2 = TP 1

        # single-node: the serving worker's host goes away mid-stream
        by_url = {f"tcp://{hosts.addr[h]}:31000": h for h in ("w0", "w1", "g0l", "g1l")}
        text, finish = stream_across_takeaway(hosts, "r1", lambda url: by_url[url], ref)
        assert (text, finish) == (ref, "length")
        # multi-node: the busy group's second host goes away mid-stream
        text, finish = stream_across_takeaway(hosts, "r2",
                                              lambda url: by_url[url][:2] + "f", ref)
        assert (text, finish) == (ref, "length")
        for h in ("r1", "r2"):
            m = metrics(hosts, h)
            assert m["sluice_migrations_total"] >= 1, m
            for _ in range(3):
                out = subprocess.run(complete(hosts, h, 16), capture_output=True, text=True)
                assert text_of(out.stdout) == ref[:len(text_of(out.stdout))], out.stdout
        # the LWS pods ran one rank each, over TCP
        for h in ("g0l", "g1l"):
            assert "tcp transport" in read_log(hosts.logs[h])
    finally:
        hosts.stop()
    assert time.time() - t_start < 90
