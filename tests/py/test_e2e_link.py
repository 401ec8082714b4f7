"""The router <-> worker link under stress and attack ("Reliability II").

- A context-1 prompt is one long prefill step; the worker's link thread keeps
  answering heartbeats through it, so no worker is declared dead and nothing
  migrates while other clients stream (before, the prefill went silent past
  --dead-after-ms and the request hopped from worker to worker).
- A dropped stream with many choices is aborted at the next step boundary:
  the worker's running count is back where it was within seconds.
- kill -9 of the router: the worker aborts everything that router asked for.
- Link authentication (proto/link_auth.h): a fake worker without the secret
  gets no request and cannot become alive; a fake router without the secret
  is refused and the real router keeps being served. The fakes speak the
  nng SP protocol over raw sockets (tcp:// and ipc:// framing), so nothing
  of sluice's own code is trusted on their side.
- `serve` keeps its sockets in a private 0700 directory, sockets 0600.

Real CPU workers (tiny random model), loopback only; generous margins (the
test machine is loaded)."""
import json
import os
import re
import signal
import socket
import stat
import struct
import threading
import time

import openai
import pytest

from router_harness import (API_KEY, SLOW, get, health, metrics, start_router, start_worker)

SECRET = "0123456789abcdef0123456789abcdef"


def client(port, timeout=300):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                         max_retries=0, timeout=timeout)


def wait_for(cond, what, timeout=20.0, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def secret_file(procs):
    path = os.path.join(procs.dir, "secret")
    with open(path, "w") as f:
        f.write(SECRET + "\n")
    os.chmod(path, 0o600)
    return path


# ---- a minimal SP (nng PAIR1) peer over raw sockets ------------------------------------

PAIR1 = 0x11


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, payload):
    """A length-delimited protobuf field."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def vfield(num, v):
    return varint(num << 3) + varint(v)


def load_report():
    """Envelope{load: LoadReport{model "tiny", context 1024, worker_id, vocab}}."""
    lr = (vfield(3, 1000) + vfield(8, 1) + vfield(10, 1024) + field(11, b"tiny") + vfield(12, 77) +
          vfield(13, 151936) + vfield(4, 1000))
    return field(4, lr)


class SPConn:
    """One SP pipe: handshake, then PAIR1 messages (a 4-byte hop count header)."""

    def __init__(self, sock, ipc):
        self.s, self.ipc = sock, ipc
        self.s.settimeout(5)
        self.s.sendall(b"\0SP\0" + struct.pack(">H", PAIR1) + b"\0\0")
        hs = self.recv_exact(8)
        assert hs[:4] == b"\0SP\0", hs

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            b = self.s.recv(n - len(buf))
            if not b:
                raise ConnectionError("closed")
            buf += b
        return buf

    def send(self, body):
        msg = struct.pack(">I", 1) + body
        head = (b"\x01" if self.ipc else b"") + struct.pack(">Q", len(msg))
        self.s.sendall(head + msg)

    def recv(self):
        if self.ipc:
            self.recv_exact(1)
        n = struct.unpack(">Q", self.recv_exact(8))[0]
        return self.recv_exact(n)[4:]  # drop the hop count

    def close(self):
        self.s.close()


def envelope_kind(body):
    """The Envelope's oneof field number (1 generate, 2 abort, 3 chunk, 4 load,
    5 ping, 6 pong, 7 auth)."""
    return body[0] >> 3 if body else 0


class FakeWorker(threading.Thread):
    """Listens on an ipc:// path like a worker; answers pings with load
    reports (so it would become alive), records every message kind it gets,
    and on each pipe also tries the handshake with a made-up proof."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.kinds, self.pipes, self.stop = path, [], 0, False
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        self.srv.settimeout(0.2)

    def run(self):
        while not self.stop:
            try:
                s, _ = self.srv.accept()
            except socket.timeout:
                continue
            self.pipes += 1
            try:
                c = SPConn(s, ipc=True)
                # a challenge, so a router with a secret answers; then a forged proof
                c.send(field(7, vfield(1, 1) + field(2, os.urandom(32))))
                c.send(load_report())
                while not self.stop:
                    try:
                        body = c.recv()
                    except socket.timeout:
                        continue
                    k = envelope_kind(body)
                    self.kinds.append(k)
                    if k == 5:
                        c.send(load_report())
                    elif k == 7:
                        c.send(field(7, vfield(1, 3) + field(3, os.urandom(32))))
            except (ConnectionError, OSError, AssertionError):
                pass
            finally:
                s.close()

    def close(self):
        self.stop = True
        self.join(5)
        self.srv.close()


@pytest.mark.parametrize("with_secret", [False, True])
def test_fake_worker_gets_nothing(procs, model, with_secret):
    """Without a secret the fake worker is taken for a worker and receives
    the prompt (the finding); with one it gets no request, never becomes
    alive, and the client gets 503."""
    path = os.path.join(procs.dir, "fake.ipc")
    fake = FakeWorker(path)
    fake.start()
    try:
        extra = ["--link-secret-file", secret_file(procs)] if with_secret else []
        r, port = start_router(procs, model, [f"ipc://{path}"], *extra,
                               alive=0 if with_secret else 1)
        if with_secret:
            wait_for(lambda: "refused" in procs.log_of(r), "the router to refuse the fake", 20)
        c = client(port, timeout=5)
        try:
            c.completions.create(model="tiny", prompt="secret prompt", max_tokens=4)
            status = 200
        except openai.APIStatusError as e:
            status = e.status_code
        except openai.APITimeoutError:
            status = "timeout"  # the fake never answers a request it got
        if with_secret:
            assert status == 503
            assert 1 not in fake.kinds, "a GenerateRequest reached the fake worker"
            assert set(fake.kinds) <= {7}, fake.kinds  # nothing but the handshake
            assert health(port)["workers_alive"] == 0
            assert "refused" in procs.log_of(r)
        else:
            assert 1 in fake.kinds, "control: without a secret the fake gets the request"
    finally:
        fake.close()


def test_fake_router_refused(procs, model):
    """A TCP worker with a secret: a peer without it is refused before it can
    send anything that counts (no chunk, no load report reaches it), and the
    real router with the secret is served, also while a fake knocks."""
    sf = secret_file(procs)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    tcp_port = s.getsockname()[1]
    s.close()
    url = f"tcp://127.0.0.1:{tcp_port}"
    w = procs.start("worker", "--model", model, "--listen", url, "--mem-bytes", 64 << 20,
                    "--context-length", 512, "--link-secret-file", sf, name="w")

    def listening():
        assert w.poll() is None, procs.log_of(w)
        try:
            socket.create_connection(("127.0.0.1", tcp_port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_for(listening, "the worker to listen", 90, step=0.3)
    time.sleep(0.5)  # the probe's pipe is closed (refused) before the fake connects

    def challenged():
        """A connection that got the worker's challenge (PAIR1 refuses a new
        pipe until the last one is fully gone: retry)."""
        for _ in range(50):
            c = SPConn(socket.create_connection(("127.0.0.1", tcp_port)), ipc=False)
            try:
                assert envelope_kind(c.recv()) == 7
                return c
            except (ConnectionError, OSError):
                c.close()
                time.sleep(0.2)
        raise AssertionError("the worker never challenged")

    def fake_router():
        c = challenged()
        kinds = [7]
        try:
            c.send(field(5, vfield(1, 1)))  # a ping, unauthenticated
            gen = vfield(1, 42) + field(2, bytes([1, 2, 3])) + vfield(4, 4)
            c.send(field(1, gen))
            while True:
                kinds.append(envelope_kind(c.recv()))
        except (ConnectionError, OSError):
            pass
        finally:
            c.close()
        return kinds

    kinds = fake_router()
    assert kinds == [7], f"an unauthenticated router got {kinds}"
    assert "refused a peer" in procs.log_of(w)
    # a forged answer to the challenge is refused too
    c = challenged()
    c.send(field(7, vfield(1, 2) + field(2, os.urandom(32)) + field(3, os.urandom(32))))
    with pytest.raises((ConnectionError, OSError)):
        while True:
            assert envelope_kind(c.recv()) == 7
    c.close()
    # a router with a wrong secret never gets the worker alive
    bad = os.path.join(procs.dir, "bad")
    with open(bad, "w") as f:
        f.write("not the secret, but long enough\n")
    rb, pb = start_router(procs, model, [url], "--link-secret-file", bad, alive=0)
    time.sleep(2)
    assert health(pb)["workers_alive"] == 0
    procs.stop(rb)
    # the real router is served, and keeps being served while a fake knocks
    _, port = start_router(procs, model, [url], "--link-secret-file", sf)
    done = {}

    def knock():
        try:
            c = SPConn(socket.create_connection(("127.0.0.1", tcp_port)), ipc=False)
            c.s.settimeout(3)
            done["kinds"] = [envelope_kind(c.recv())]
        except (ConnectionError, OSError) as e:
            done["kinds"] = []
    t = threading.Thread(target=knock)
    t.start()
    out = client(port).completions.create(model="tiny", prompt="hello", max_tokens=4,
                                          temperature=0)
    t.join(10)
    assert out.choices[0].finish_reason in ("length", "stop")
    assert 3 not in done.get("kinds", []) and 4 not in done.get("kinds", [])
    assert health(port)["workers_alive"] == 1


def test_long_prefill_keeps_workers_alive(procs, model):
    """A context-1 prompt while others stream: nobody is declared dead,
    nothing migrates, everything succeeds. (--dead-after-ms 1500 is far
    shorter than this prefill on a CPU.)"""
    ctx = 1024
    urls = [start_worker(procs, model, f"w{i}", context_length=ctx) for i in range(2)]
    _, port = start_router(procs, model, urls)
    ups, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            m = metrics(port)
            ups.append(min(m[f'sluice_worker_up{{worker="{u}"}}'] for u in urls))
            time.sleep(0.2)

    errors, results = [], []

    def stream(i):
        try:
            s = client(port).completions.create(
                model="tiny", prompt=f"stream {i} about rivers", max_tokens=48,
                temperature=0, stream=True, extra_body={"ignore_eos": True})
            results.append(sum(1 for _ in s))
        except Exception as e:  # noqa: BLE001 - any failure is the test's failure
            errors.append(repr(e))

    def long_prompt():
        try:
            ids = [100 + (i * 7919) % 20000 for i in range(ctx - 1)]
            t0 = time.time()
            out = client(port).completions.create(model="tiny", prompt=ids, max_tokens=1,
                                                  temperature=0)
            results.append(("long", out.choices[0].finish_reason, time.time() - t0))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    w = threading.Thread(target=watch)
    w.start()
    ts = [threading.Thread(target=long_prompt)] + [threading.Thread(target=stream, args=(i,))
                                                  for i in range(3)]
    for t in ts:
        t.start()
        time.sleep(0.3)
    for t in ts:
        t.join(300)
    stop.set()
    w.join()
    assert not errors, errors
    assert len(results) == 4
    m = metrics(port)
    assert m["sluice_migrations_total"] == 0
    assert m["sluice_lost_total"] == 0
    assert min(ups) == 1, "a worker was declared dead during the long prefill"


def test_dropped_stream_aborts_fast(procs, model):
    """A stream of 8 prompts x 64 choices (512 GenerateRequests) dropped by
    its client: the worker takes the requests and the aborts in at once, so
    its running count (from its load reports) is back to 0 within seconds.
    (Before, a busy worker took one message per step: the requests trickled
    in and kept running long after the client had gone.)"""
    url = start_worker(procs, model, "w", context_length=1024)
    _, port = start_router(procs, model, [url])
    key = f'sluice_worker_running{{worker="{url}"}}'
    assert metrics(port)[key] == 0
    # under the sanitizers a step of 512 sampled rows takes seconds: 128 choices there
    n_prompts = 8 if SLOW == 1 else 2
    s = client(port).completions.create(model="tiny",
                                        prompt=[f"choices of prompt {i}" for i in range(n_prompts)],
                                        n=64, max_tokens=900, temperature=1, stream=True,
                                        extra_body={"ignore_eos": True})
    it = iter(s)
    for _ in range(64):
        next(it)
    s.response.close()
    t0 = time.time()
    peak = [0]

    def idle():
        r = metrics(port)[key]
        peak[0] = max(peak[0], r)
        return r == 0
    wait_for(idle, "the worker to drop the aborted choices", 20 * SLOW, step=0.2)
    print(f"running back to 0 after {time.time() - t0:.1f} s (peak {peak[0]})")


def test_router_kill_aborts_on_worker(procs, model):
    """kill -9 of the router: the worker aborts what it was running for it
    within seconds, and a new router finds it idle."""
    url = start_worker(procs, model, "w", context_length=1024)
    r, port = start_router(procs, model, [url])
    s = client(port).completions.create(model="tiny", prompt="orphans", n=32, max_tokens=900,
                                        temperature=1, stream=True,
                                        extra_body={"ignore_eos": True})
    it = iter(s)
    for _ in range(32 * 2):
        next(it)
    w = next(p for p in procs.procs if p.args[1] == "worker")
    r.send_signal(signal.SIGKILL)
    r.wait()
    procs.procs.remove(r)

    def aborted():
        m = re.findall(r"router disconnected: aborted (\d+) requests", procs.log_of(w))
        return m and int(m[-1]) > 0
    wait_for(aborted, "the worker to abort the orphaned requests", 10 * SLOW)
    _, port2 = start_router(procs, model, [url])
    wait_for(lambda: metrics(port2)[f'sluice_worker_running{{worker="{url}"}}'] == 0,
             "the worker to report itself idle", 10)


def test_serve_private_sockets(procs, model, tmp_path):
    """serve: sockets in a fresh 0700 directory, sockets and secret 0600, all
    removed on exit; the link is authenticated."""
    tmp = tmp_path / "t"
    tmp.mkdir()
    os.environ["TMPDIR"] = str(tmp)
    try:
        p, port = start_router(procs, model, [], "--dp-size", "2", "--context-length", 512,
                               command="serve", alive=2)
    finally:
        del os.environ["TMPDIR"]
    dirs = [d for d in tmp.iterdir() if d.name.startswith("sluice-serve-")]
    assert len(dirs) == 1, dirs
    d = dirs[0]
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    names = sorted(x.name for x in d.iterdir())
    assert names == ["link-secret", "worker-0.ipc", "worker-1.ipc"], names
    for x in d.iterdir():
        assert stat.S_IMODE(x.stat().st_mode) == 0o600, x
    assert stat.S_ISSOCK((d / "worker-0.ipc").stat().st_mode)
    out = client(port).completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert out.choices[0].text is not None
    procs.stop(p)
    assert not d.exists()
