"""deploy/k8s against the Kubernetes API schemas, offline: kubernetes-validate's bundled
strict schemas (unknown fields fail) for the built-in kinds, and the vendored
LeaderWorkerSet schema (deploy/k8s/schemas, from the LWS CRD; its pod templates resolve
to the same bundled core/v1 definitions). Then what a schema cannot see: every $(VAR) in
args is defined, every flag is one `sluice <command> --help` lists (the PD layout's too),
Services select pods, probes name
ports that exist, the three routers differ only in the workers they dial, and the
LeaderWorkerSet follows docs/parallel.md (leader-only readiness, /dev/shm in memory,
RecreateGroupOnPodRestart)."""
import json
import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import referencing
from kubernetes_validate import utils as kvu

from deploy_manifests import K8S, LAYOUTS, config, container_env_names, find, load, \
    pod_templates
from router_harness import BIN

VERSIONS = ["1.30.0", kvu.latest_version() + ".0"]  # preStop `sleep` is in the API from 1.30
LWS_SCHEMA = K8S / "schemas" / "leaderworkerset-leaderworkerset.x-k8s.io-v1.json"
LWS_VARS = {"LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX", "LWS_NAME",
            "LWS_GROUP_INDEX"}


def clean(doc):
    return {k: v for k, v in doc.items() if k != "_file"}


def validate_lws(doc, version):
    defs = kvu.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json",
                               version)
    schema = json.loads(LWS_SCHEMA.read_text())
    registry = referencing.Registry().with_resources([
        (schema["$id"], referencing.Resource.from_contents(schema)),
        (defs["$id"], referencing.Resource.from_contents(defs))])
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


def validate(doc, version):
    if doc["kind"] == "LeaderWorkerSet":
        validate_lws(doc, kvu.major_minor(version) + ".0")
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid(version):
    docs = load()
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Secret", "Deployment", "StatefulSet", "Service", "LeaderWorkerSet",
            "PodDisruptionBudget", "PersistentVolumeClaim"} <= kinds, kinds
    for d in docs:
        try:
            validate(clean(d), version)
        except Exception as e:  # name the file and object
            raise AssertionError(f"{d['_file']} {d['kind']}/{d['metadata']['name']}: {e}")


def test_the_schemas_reject_mistakes():
    v = VERSIONS[-1]
    lws = clean(find(load("multi-node"), "LeaderWorkerSet", "sluice-tp"))
    bad = json.loads(json.dumps(lws))
    bad["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "RecreateGroup"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, v)
    bad = json.loads(json.dumps(lws))  # a typo inside the pod template (core/v1 strict)
    bad["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["argz"] = []
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, v)
    sts = clean(find(load("single-node"), "StatefulSet", "sluice-worker"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(Exception):
        validate(sts, v)


def help_flags(command):
    r = subprocess.run([BIN, command, "--help"], capture_output=True, text=True)
    return set(re.findall(r"(--[a-z0-9-]+)", r.stdout + r.stderr))



def test_args_use_defined_vars_and_real_flags():
    docs = load()
    known = {c: help_flags(c) for c in ("router", "worker")}
    for d in docs:
        for label, t in pod_templates(d):
            for c in t["spec"]["containers"]:
                names = container_env_names(c, docs)
                if d["kind"] == "LeaderWorkerSet":
                    names |= LWS_VARS
                for a in c["args"]:
                    for var in re.findall(r"\$\(([A-Za-z_0-9]+)\)", a):
                        assert var in names, f"{label}: $({var}) undefined in {a}"
                cmd, flags = c["args"][0], [a.split("=")[0] for a in c["args"][1:]]
                assert cmd in known, (label, cmd)
                for f in flags:
                    assert f in known[cmd], f"{label}: `sluice {cmd}` has no {f}"


def test_services_probes_and_resources():
    docs = load()
    templates = [(d, l, t) for d in docs for l, t in pod_templates(d)]
    for s in (d for d in docs if d["kind"] in ("Service", "PodDisruptionBudget")):
        sel = s["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        # LWS adds leaderworkerset.sigs.k8s.io/name to its pods
        def labels(d, t):
            extra = {"leaderworkerset.sigs.k8s.io/name": d["metadata"]["name"]} \
                if d["kind"] == "LeaderWorkerSet" else {}
            return {**t["metadata"]["labels"], **extra}
        hits = [l for d, l, t in templates if sel.items() <= labels(d, t).items()]
        assert hits, f"{s['_file']} {s['kind']}/{s['metadata']['name']} selects no pod"
    for d, label, t in templates:
        for c in t["spec"]["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if p:
                    port = (p.get("httpGet") or p.get("tcpSocket"))["port"]
                    assert port in ports, f"{label} {probe} port {port}"
            res = c["resources"]
            if "worker" in c["args"][0]:
                assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
                mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
                assert mounts.get("dshm") == "/dev/shm", label
                vols = {v["name"]: v for v in t["spec"]["volumes"]}
                assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    # single-node workers: GPUs per pod = TP_SIZE
    w = find(docs, "StatefulSet", "sluice-worker")["spec"]["template"]["spec"]["containers"][0]
    assert w["resources"]["limits"]["nvidia.com/gpu"] == config(docs)["TP_SIZE"]


def test_routers_differ_only_in_their_workers():
    routers = [find(load(l), "Deployment", "sluice-router")
               for l in ("single-node", "multi-node", "pd")]
    def strip(d):
        d = json.loads(json.dumps(clean(d)))
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["args"] = [a for a in c["args"] if not a.split("=")[0] in
                     ("--worker-dns", "--worker", "--pd-disaggregation", "--prefill", "--decode")]
        return d
    assert strip(routers[0]) == strip(routers[1]) == strip(routers[2])
    ann = routers[0]["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    c = routers[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "--api-key=$(SLUICE_API_KEY)" in c["args"]
    key = next(e for e in c["env"] if e["name"] == "SLUICE_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "sluice-api-key"


def test_leaderworkerset_follows_the_multi_node_launch():
    lws = find(load("multi-node"), "LeaderWorkerSet", "sluice-tp")["spec"]["leaderWorkerTemplate"]
    assert lws["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = lws["leaderTemplate"]["spec"]["containers"][0]
    follower = lws["workerTemplate"]["spec"]["containers"][0]
    assert "readinessProbe" in leader
    assert not any(p in follower for p in ("readinessProbe", "livenessProbe", "startupProbe"))
    for c in (leader, follower):
        for a in ("--dist-init-addr=$(LWS_LEADER_ADDRESS):29500", "--nnodes=$(LWS_GROUP_SIZE)",
                  "--node-rank=$(LWS_WORKER_INDEX)"):
            assert a in c["args"], (a, c["args"])
    # the follower runs the leader's command without --listen
    assert [a for a in leader["args"] if not a.startswith("--listen")] == follower["args"]
    # size pods x GPUs each = the group's ranks
    gpus = int(leader["resources"]["limits"]["nvidia.com/gpu"])
    assert lws["size"] * gpus == int(config(load())["GROUP_TP_SIZE"])


def test_layouts_exist():
    for l in LAYOUTS:
        assert list((K8S / l).glob("*.yaml")), l
