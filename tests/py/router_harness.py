"""Processes for the router's end-to-end tests: a tiny model, `sluice worker`
or `sluice mock-worker` processes on ipc:// sockets, and `sluice router` on a
free port. Everything started here is stopped by Procs.stop() (the fixtures'
finalizers), so a failing test leaves nothing running."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

SRC = pathlib.Path(os.environ.get("SLUICE_SRC", pathlib.Path(__file__).resolve().parents[2]))
BIN = os.environ.get("SLUICE_BIN", str(SRC / "build" / "bin" / "sluice"))
DATA = SRC / "tests" / "data"
TOKENIZER = DATA / "qwen3-tokenizer"  # the real Qwen3 tokenizer, shipped in tests/data
CODER_TEMPLATE = DATA / "qwen3-coder-template"  # the Qwen3-Coder chat template
API_KEY = "test-key"
# How much slower the binaries under test run (3 under the sanitizers): deadlines of waits scale.
SLOW = float(os.environ.get("SLUICE_SLOW", "1"))


def data_path(p):
    """p itself; a missing test input fails the test that needs it, naming the file."""
    p = pathlib.Path(p)
    assert p.exists(), f"test data missing: {p}"
    return p


class Procs:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-e2e-")
        self.procs = []
        self.n = 0

    def start(self, *args, name="proc"):
        self.n += 1
        log = open(os.path.join(self.dir, f"{self.n:02d}-{name}.log"), "w+")
        p = subprocess.Popen([BIN, *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        p.log = log
        self.procs.append(p)
        return p

    def ipc(self, name):
        return f"ipc://{self.dir}/{name}.ipc"

    def stop(self, p=None, sig=signal.SIGTERM):
        """Stops p (default: everything). A router that does not exit 0 on
        SIGTERM, or any process whose log holds a sanitizer report (the
        ASan/UBSan CI run: workers too), fails the test after everything is
        stopped."""
        problems = []
        for q in [p] if p else list(self.procs):
            if q.poll() is None:
                q.send_signal(sig)
                try:
                    q.wait(10 * SLOW)
                except subprocess.TimeoutExpired:
                    q.kill()
                    q.wait()
                    problems.append(f"{q.args[1]} ignored signal {sig}:\n{self.log_of(q)[-3000:]}")
            if q in self.procs:
                self.procs.remove(q)
            if q.args[1] in ("router", "serve", "mock-worker", "worker"):
                log = self.log_of(q)
                if "Sanitizer" in log or "runtime error:" in log:
                    problems.append(f"{q.args[1]}:\n{log[-4000:]}")
                if sig == signal.SIGTERM and q.args[1] in ("router", "serve") and q.returncode:
                    problems.append(f"{q.args[1]} exited {q.returncode}:\n{log[-2000:]}")
        if p is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        assert not problems, "\n".join(problems)

    def log_of(self, p):
        return read_log(p.log)


def read_log(f):
    """What a running process has written to its log file f so far, read through a handle
    of its own: seeking f, the one the process writes through (one file offset shared with
    it and its children), let a line written meanwhile land at the moved offset, over the
    log's first lines."""
    with open(f.name, errors="replace") as g:
        return g.read()


def make_tiny(out, arch="qwen3"):
    subprocess.run([BIN, "make-tiny", "--arch", arch, "--out", str(out), "--tokenizer",
                    str(data_path(TOKENIZER / "tokenizer.json").parent)], check=True,
                   capture_output=True)
    return str(out)


_HELD = []  # reserve_port's sockets: open until this pytest process exits


def reserve_port(host="127.0.0.1"):
    """A port for --dist-init-addr that no other process gets meanwhile: a socket bound
    there with SO_REUSEADDR and held, never listening, until the tests end. Rank 0 sets
    SO_REUSEADDR too, so it still binds and listens there, and a rank that finds nobody
    listening is refused as before. free_port's bind-and-close let a loaded machine hand
    the number to someone else before rank 0 bound it (as tests/unit/test_comm.c once
    saw). Only for the communicator's address: the nng --listen URL keeps free_port."""
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    _HELD.append(s)
    return s.getsockname()[1]


def children_of(pid):
    r = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline").read().split("\0")
    except OSError:
        return []


def descendants(pid):
    kids = children_of(pid)
    return kids + [d for k in kids for d in descendants(k)]


def tokenize(model, text):
    r = subprocess.run([BIN, "tokenize", "--model", model], input=text.encode(), check=True,
                       capture_output=True)
    return [int(x) for x in r.stdout.split()]


def start_worker(procs, model, name, context_length=512):
    url = procs.ipc(name)
    procs.start("worker", "--model", model, "--listen", url, "--mem-bytes", 64 << 20,
                "--context-length", context_length, name=name)
    return url


def start_mock(procs, name, *extra):
    url = procs.ipc(name)
    procs.start("mock-worker", "--listen", url, *extra, name=name)
    return url


def get(port, path, key=API_KEY):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def health(port):
    """/health's JSON whatever its status (503 until a worker is ready)."""
    try:
        return json.loads(get(port, "/health"))
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}")


def post(port, path, body, key=API_KEY, raw=None):
    """POST JSON (or raw bytes); returns (status, parsed JSON body)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_mock_router(procs, model, reply, *flags):
    """A mock worker that answers every request with the tokens of `reply` then
    <|im_end|>, and a router over it with `flags`. Returns the router's port."""
    ids = tokenize(model, reply) + tokenize(model, "<|im_end|>")
    w = start_mock(procs, f"mock{procs.n}", "--reply-ids", ",".join(map(str, ids)))
    _, port = start_router(procs, model, [w], *flags)
    return port


def start_router(procs, model, workers, *extra, alive=None, command="router"):
    """Starts `sluice router` (or `sluice serve`) on a free port; waits until
    `alive` workers (default: all) answer. Returns (process, port)."""
    args = [command, "--model-path", model, "--port", 0, "--served-model-name", "tiny",
            "--api-key", API_KEY, "--heartbeat-ms", 200, "--dead-after-ms", 1500]
    for w in workers:
        args += ["--worker", w]
    p = procs.start(*args, *extra, name=command)
    port = None
    deadline = time.time() + 30
    while time.time() < deadline:
        assert p.poll() is None, procs.log_of(p)
        for line in procs.log_of(p).splitlines():
            m = re.search(r"listening on http://[^ ]+:(\d+)$", line)
            if m:
                port = int(m.group(1))
        if port:
            try:
                h = health(port)
            except OSError:
                h = {}
            if h.get("workers_alive") == (len(workers) if alive is None else alive):
                return p, port
        time.sleep(0.05)
    raise AssertionError("router did not come up:\n" + procs.log_of(p))


def metrics(port):
    out = {}
    for line in get(port, "/metrics").splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out
