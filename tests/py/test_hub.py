"""`--model-path ORG/NAME` from the Hugging Face Hub (common/sl_hub.c), against a fake hub
in this process: the model API, resolve URLs and a CDN the weights redirect to, each on a
127.0.0.1 port, with Range requests, tokens, a 404 model and connections cut half-way.

Checked: serve downloads a model into the cache layout huggingface_hub uses and serves it;
the next start uses the cache without the network (and with HF_HUB_OFFLINE); a cut
connection and a part left by an earlier process resume with a Range request; the router
downloads no weights; two processes download a file once; huggingface_hub reads what sluice
wrote; a missing model, a bad token, an unreachable hub and HF_HUB_OFFLINE give clear errors
and a non-zero exit; the binary does not link libcurl.
"""
import hashlib
import http.server
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from router_harness import BIN, SRC, Procs, post, start_mock, start_router

SHA = "0123456789abcdef0123456789abcdef01234567"  # the one commit every revision names
REVISIONS = {"main", "v1"}
TOKEN = "hf_test_token_0123"
SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
TEXT = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
WEIGHTS = SHARDS + ["model.safetensors.index.json"]
# files a server does not read: never requested
DECOYS = ["pytorch_model.bin", "model.gguf", "README.md", ".gitattributes", "original/model.safetensors",
          "onnx/model.onnx"]


def git_blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name):
    return name.endswith((".safetensors", ".bin", ".gguf", ".onnx"))


def blob_of(name, data):
    """The name huggingface_hub gives the file under blobs/: LFS sha256, else git blob id."""
    return hashlib.sha256(data).hexdigest() if is_lfs(name) else git_blob_id(data)


def split_safetensors(path):
    """model.safetensors -> two shards and their index, as a sharded checkpoint."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    names = sorted(k for k in header if k != "__metadata__")
    out, weight_map = {}, {}
    for shard, part in zip(SHARDS, (names[:len(names) // 2], names[len(names) // 2:])):
        h, body = {}, b""
        for k in part:
            b, e = header[k]["data_offsets"]
            h[k] = dict(header[k], data_offsets=[len(body), len(body) + e - b])
            body += data[b:e]
            weight_map[k] = shard
        hj = json.dumps(h).encode()
        hj += b" " * (-len(hj) % 8)
        out[shard] = struct.pack("<Q", len(hj)) + hj + body
    out["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": sum(len(v) for v in out.values())}, "weight_map": weight_map}).encode()
    return out


class FakeHub:
    """The Hub on one port, its CDN on another; every request is logged as
    (server, path, headers)."""

    def __init__(self, repos, private):
        self.repos = repos  # id -> {file name: bytes}
        self.private = private  # id -> the token it needs
        self.by_sha256 = {hashlib.sha256(d).hexdigest(): d for r in repos.values() for d in r.values()}
        self.cut = set()  # sha256 of files whose next CDN answer stops half-way
        self.slow = {}  # sha256 -> seconds the CDN pauses half-way
        self.busy = set()  # resolve paths answered 503 once
        self.log = []
        self.lock = threading.Lock()
        self.servers = [self._serve("hub", self._hub), self._serve("cdn", self._cdn)]
        self.url = "http://127.0.0.1:%d" % self.servers[0].server_port
        self.cdn_url = "http://127.0.0.1:%d" % self.servers[1].server_port

    def _serve(self, name, route):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with hub.lock:
                    hub.log.append((name, self.path, dict(self.headers)))
                route(self)

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()

    def requests(self, server=None):
        with self.lock:
            return [(s, p, h) for s, p, h in self.log if server in (None, s)]

    @staticmethod
    def _send(h, status, body=b"", headers=()):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _auth_ok(self, h, repo):
        need = self.private.get(repo)
        if need and h.headers.get("Authorization") != "Bearer " + need:
            msg = "Invalid credentials in Authorization header" if h.headers.get("Authorization") \
                else "Access to model %s is restricted" % repo
            self._send(h, 401, json.dumps({"error": msg}).encode(), [("X-Error-Message", msg)])
            return False
        return True

    def _hub(self, h):
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/?]+)(\?blobs=true)?", h.path)
        if m:
            repo, rev, blobs = m.group(1), urllib.parse.unquote(m.group(2)), m.group(3)
            if not self._auth_ok(h, repo):
                return
            if repo not in self.repos or rev not in REVISIONS:
                return self._send(h, 404, b'{"error":"Repository not found"}', [("X-Error-Message", "Repository not found")])
            sib = []
            for name, data in sorted(self.repos[repo].items()):
                s = {"rfilename": name}
                if blobs:  # as the Hub: blob ids and sizes only when asked for
                    s.update(blobId=git_blob_id(data), size=len(data))
                if blobs and is_lfs(name):
                    s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
                sib.append(s)
            body = json.dumps({"id": repo, "sha": SHA, "siblings": sib}).encode()
            return self._send(h, 200, body, [("Content-Type", "application/json")])
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([0-9a-f]{40})/(.+)", h.path)
        if m and m.group(1) in self.repos and m.group(2) == SHA:
            repo, name = m.group(1), urllib.parse.unquote(m.group(3))
            with self.lock:
                busy = h.path in self.busy
                self.busy.discard(h.path)
            if busy:
                return self._send(h, 503, b'{"error":"try again"}')
            if not self._auth_ok(h, repo):
                return
            data = self.repos[repo].get(name)
            if data is None:
                return self._send(h, 404, b'{"error":"Entry not found"}')
            if is_lfs(name):  # the real Hub sends LFS files from its CDN
                loc = "%s/cdn/%s" % (self.cdn_url, hashlib.sha256(data).hexdigest())
                return self._send(h, 302, b"", [("Location", loc)])
            return self._file(h, data)
        self._send(h, 404, b'{"error":"Not found"}')

    def _cdn(self, h):
        sha = h.path.rsplit("/", 1)[-1]
        if sha not in self.by_sha256:
            return self._send(h, 404)
        with self.lock:
            cut = sha in self.cut
            self.cut.discard(sha)
        self._file(h, self.by_sha256[sha], cut, self.slow.get(sha, 0))

    def _file(self, h, data, cut=False, slow=0):
        start = 0
        rng = h.headers.get("Range")
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                return self._send(h, 416)
            h.send_response(206)
            h.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        half = len(body) // 2
        h.wfile.write(body[:half])
        h.wfile.flush()
        if cut:  # the connection drops: the client has half of what it was promised
            h.close_connection = True
            return
        time.sleep(slow)
        h.wfile.write(body[half:])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "m"
    subprocess.run([BIN, "make-tiny", "--arch", "qwen3", "--out", str(d)], check=True, capture_output=True)
    out = {n: (d / n).read_bytes() for n in TEXT}
    out.update(split_safetensors(d / "model.safetensors"))
    for n in DECOYS:
        out[n] = b"not for sluice " * 64
    return out


@pytest.fixture(scope="module")
def hub(files):
    h = FakeHub({"fakeorg/tiny": files, "fakeorg/private": files}, {"fakeorg/private": TOKEN})
    yield h
    h.close()


@pytest.fixture
def cache(tmp_path, monkeypatch, hub):
    """This test's environment: an empty cache in HF_HOME, the fake hub as HF_ENDPOINT, no
    token, info logs (the download's progress lines). Returns the hub cache."""
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
              "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("SLUICE_LOG", "info")
    with hub.lock:
        hub.log.clear()
        hub.cut.clear()
        hub.slow.clear()
        hub.busy.clear()
    return tmp_path / "hf" / "hub"


def run(*args, input=None, **env):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=60, input=input,
                       env=dict(os.environ, **env))
    assert "Sanitizer" not in r.stderr and "runtime error:" not in r.stderr, r.stderr
    assert r.returncode >= 0, "killed by signal %d:\n%s" % (-r.returncode, r.stderr)
    return r


def generate(model, *extra, **env):
    return run("generate", "--model", model, "--ids", "1,2,3", "--max-new-tokens", 2, *extra, **env)


def check_snapshot(cache, files, names, repo="fakeorg/tiny", ref="main"):
    """The huggingface_hub layout: refs/REF -> SHA, snapshot links into blobs/, nothing partial."""
    root = cache / ("models--" + repo.replace("/", "--"))
    assert (root / "refs" / ref).read_text() == SHA
    snap = root / "snapshots" / SHA
    assert sorted(os.listdir(snap)) == sorted(names)
    for n in names:
        assert os.readlink(snap / n) == "../../blobs/" + blob_of(n, files[n]), n
        assert (snap / n).read_bytes() == files[n], n
    assert not list((root / "blobs").glob("*.incomplete"))
    return snap


def test_serve_downloads_resumes_then_uses_the_cache(hub, cache, files):
    shard = hashlib.sha256(files[SHARDS[1]]).hexdigest()
    hub.cut.add(shard)  # the CDN drops the connection half-way through shard 2, once
    procs = Procs()
    try:
        serve, port = start_router(procs, "fakeorg/tiny", [], "--mem-bytes", 64 << 20, "--context-length", 512,
                                   "--chat-template", "qwen3", command="serve", alive=1)
        st, body = post(port, "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert st == 200 and body["choices"], body
        log = procs.log_of(serve)
    finally:
        procs.stop()
    snap = check_snapshot(cache, files, TEXT + WEIGHTS)
    assert "fakeorg/tiny: revision main is commit %s" % SHA in log, log
    assert "%s: resuming at" % SHARDS[1] in log, log
    # the cut file came back with a Range request from where the connection dropped
    got = [h.get("Range") for s, p, h in hub.requests("cdn") if p.endswith(shard)]
    assert got == [None, "bytes=%d-" % (len(files[SHARDS[1]]) // 2)], got
    asked = [urllib.parse.unquote(p) for _, p, _ in hub.requests()]
    assert not [p for p in asked for d in DECOYS if p.endswith("/" + d)], asked
    assert all("Authorization" not in h for _, _, h in hub.requests()), "no token was set"

    # the next start finds the model in the cache: no request at all, even with the hub gone
    with hub.lock:
        hub.log.clear()
    r = generate("fakeorg/tiny", HF_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 0 and "cached snapshot %s" % snap in r.stderr, r.stderr
    r = generate("fakeorg/tiny", HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    # the other commands that read a tokenizer take the id too
    r = run("tokenize", "--model", "fakeorg/tiny", input="hi", HF_HUB_OFFLINE="1")
    assert r.returncode == 0 and r.stdout.split(), r.stderr
    r = run("grammar", "--grammar", SRC / "tests" / "data" / "grammar" / "json.gbnf", "--bench",
            "--tokenizer", "fakeorg/tiny", "--steps", 3, HF_HUB_OFFLINE="1")
    assert r.returncode == 0 and "vocabulary: 265 ids (%s" % snap in r.stdout, r.stdout + r.stderr
    assert hub.requests() == []


def test_router_downloads_no_weights_and_resumes_a_part(hub, cache, files):
    """`sluice router` reads only the text files; a part an earlier process left
    is resumed with a Range request (on the hub itself: tokenizer.json is no LFS file);
    a 503 is retried."""
    blobs = cache / "models--fakeorg--tiny" / "blobs"
    blobs.mkdir(parents=True)
    tok = files["tokenizer.json"]
    (blobs / (git_blob_id(tok) + ".incomplete")).write_bytes(tok[:1000])
    busy = "/fakeorg/tiny/resolve/%s/tokenizer_config.json" % SHA
    hub.busy.add(busy)
    procs = Procs()
    try:
        w = start_mock(procs, "mock")
        router, _ = start_router(procs, "fakeorg/tiny", [w], "--revision", "v1", "--chat-template", "qwen3")
        log = procs.log_of(router)
    finally:
        procs.stop()
    check_snapshot(cache, files, TEXT, ref="v1")
    assert "tokenizer.json: resuming at 1.0 kB" in log, log
    asked = [(urllib.parse.unquote(p), h.get("Range")) for _, p, h in hub.requests()]
    assert ("/fakeorg/tiny/resolve/%s/tokenizer.json" % SHA, "bytes=1000-") in asked, asked
    assert "/api/models/fakeorg/tiny/revision/v1?blobs=true" in [p for p, _ in asked]
    assert not [p for p, _ in asked if "safetensors" in p], asked
    assert [p for p, _ in asked].count(busy) == 2 and "HTTP 503" in log, log


def test_token_goes_to_the_hub_only(hub, cache, files, tmp_path):
    r = generate("fakeorg/private", "--revision", "v1", HF_TOKEN=TOKEN)
    assert r.returncode == 0, r.stderr
    check_snapshot(cache, files, TEXT + WEIGHTS, repo="fakeorg/private", ref="v1")
    hub_auth = {h.get("Authorization") for _, _, h in hub.requests("hub")}
    assert hub_auth == {"Bearer " + TOKEN}
    cdn = hub.requests("cdn")
    assert cdn and all("Authorization" not in h for _, _, h in cdn), "the token leaked to the CDN"
    # the token `huggingface-cli login` leaves in HF_HOME/token, with another cache
    (tmp_path / "hf" / "token").write_text(TOKEN + "\n")
    r = run("tokenize", "--model", "fakeorg/private", input="hi", HF_HUB_CACHE=str(tmp_path / "cache2"))
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_errors_say_what_to_do(hub, cache):
    # each fails while parsing serve's flags: no worker starts, exit 2
    r = run("serve", "--model-path", "fakeorg/missing")
    url = hub.url + "/api/models/fakeorg/missing/revision/main?blobs=true"
    assert r.returncode == 2 and "HTTP 404 from %s: no such model or revision" % url in r.stderr, r.stderr
    r = run("serve", "--model-path", "fakeorg/tiny", "--revision", "nope")
    assert r.returncode == 2 and "HTTP 404" in r.stderr and "/revision/nope?" in r.stderr, r.stderr
    r = run("serve", "--model-path", "fakeorg/private")
    assert r.returncode == 2 and "HTTP 401" in r.stderr and "set HF_TOKEN" in r.stderr, r.stderr
    assert "Access to model fakeorg/private is restricted" in r.stderr
    r = run("serve", "--model-path", "fakeorg/private", HF_TOKEN="hf_wrong")
    assert r.returncode == 2 and "the token from HF_TOKEN was refused" in r.stderr, r.stderr
    r = run("worker", "--model-path", "fakeorg/private", "--listen", "ipc:///tmp/x.ipc",
            HUGGING_FACE_HUB_TOKEN="hf_wrong")
    assert r.returncode == 1 and "HUGGING_FACE_HUB_TOKEN was refused" in r.stderr, r.stderr
    r = run("serve", "--model-path", "fakeorg/tiny", "--revision", "../x")
    assert r.returncode == 2 and "--revision ../x: not a branch, tag or commit" in r.stderr, r.stderr
    r = run("tokenize", "--model", "fakeorg/tiny", input="hi", HF_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 1 and "fakeorg/tiny: the Hub cannot be reached: GET http://127.0.0.1:9/" in r.stderr
    # offline: not a single request, and a message naming the variable and the cache
    with hub.lock:
        hub.log.clear()
    r = run("serve", "--model-path", "fakeorg/tiny", HF_HUB_OFFLINE="1")
    assert r.returncode == 2 and "HF_HUB_OFFLINE is set" in r.stderr and str(cache) in r.stderr, r.stderr
    assert hub.requests() == []
    assert not (cache / "models--fakeorg--tiny" / "snapshots").exists()


def test_two_processes_download_a_file_once(hub, cache, files):
    shard = hashlib.sha256(files[SHARDS[0]]).hexdigest()
    hub.slow[shard] = 2.5  # long enough for the other process to wait, and for a progress line
    env = dict(os.environ)
    ps = [subprocess.Popen([BIN, "generate", "--model", "fakeorg/tiny", "--ids", "1,2", "--max-new-tokens", "1"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in ps]
    for p, (_, err) in zip(ps, outs):
        assert p.returncode == 0, err
    err = "\n".join(e for _, e in outs)
    assert "another process is downloading it" in err, err
    assert re.search(r"%s: [\d.]+ [kMG]?B / [\d.]+ [kMG]?B \(\d+%%\), [\d.]+ MB/s" % re.escape(SHARDS[0]), err), err
    whole = [p for _, p, h in hub.requests("cdn") if p.endswith(shard) and "Range" not in h]
    assert len(whole) == 1, hub.requests("cdn")
    check_snapshot(cache, files, TEXT + WEIGHTS)


def test_huggingface_hub_reads_the_cache(hub, cache, files):
    """Python tools find what sluice downloaded (huggingface_hub comes with tokenizers)."""
    pytest.importorskip("huggingface_hub")
    r = generate("fakeorg/tiny")
    assert r.returncode == 0, r.stderr
    code = ("import huggingface_hub as h, sys\n"
            "info = h.scan_cache_dir()\n"
            "assert not info.warnings, info.warnings\n"
            "(repo,) = info.repos\n"
            "(rev,) = repo.revisions\n"
            "print(repo.repo_id, rev.commit_hash, sorted(rev.refs), sorted(f.file_name for f in rev.files))\n"
            "print(h.hf_hub_download('fakeorg/tiny', 'config.json'))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "fakeorg/tiny %s ['main'] %s" % (SHA, sorted(TEXT + WEIGHTS)), lines
    assert lines[1] == str(cache / "models--fakeorg--tiny" / "snapshots" / SHA / "config.json")


def test_libcurl_is_not_linked():
    """libcurl is dlopen()ed at the first download: a machine without it still runs sluice."""
    if not shutil.which("readelf"):
        pytest.skip("no readelf")
    out = subprocess.run(["readelf", "-d", BIN], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.*)\]", out)
    assert needed and not [n for n in needed if "curl" in n], needed
