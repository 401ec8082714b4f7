"""The Kubernetes manifests of deploy/k8s as Python data, and the sluice command lines their
containers run (tests/py/test_deploy_k8s.py validates them, test_deploy_multihost.py runs
them). Kubernetes expands $(NAME) in args from the container's environment: render() does
the same from a dict."""
import pathlib
import re

import yaml

from router_harness import SRC

K8S = SRC / "deploy" / "k8s"
LAYOUTS = ("common", "single-node", "multi-node", "pd")


def load(layout=None):
    """Every document of deploy/k8s/<layout>/*.yaml (all layouts when None), each with
    '_file' set to its path relative to deploy/k8s."""
    docs = []
    for d in [layout] if layout else LAYOUTS:
        for f in sorted((K8S / d).glob("*.yaml")):
            for doc in yaml.safe_load_all(f.read_text()):
                if doc:
                    doc["_file"] = str(f.relative_to(K8S))
                    docs.append(doc)
    return docs


def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_templates(doc):
    """(label, pod template) of a workload: one for Deployment/StatefulSet, leader and
    worker for a LeaderWorkerSet, none for other kinds."""
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return [(doc["metadata"]["name"], doc["spec"]["template"])]
    if doc["kind"] == "LeaderWorkerSet":
        t = doc["spec"]["leaderWorkerTemplate"]
        return [(doc["metadata"]["name"] + "/leader", t["leaderTemplate"]),
                (doc["metadata"]["name"] + "/worker", t["workerTemplate"])]
    return []


def config(docs):
    return find(docs, "ConfigMap", "sluice-config")["data"]


def render(args, env):
    """args with every $(NAME) replaced from env (a name not in env is an error: Kubernetes
    would leave it verbatim, which is never what a manifest means)."""
    def sub(m):
        assert m.group(1) in env, f"$({m.group(1)}) is not defined"
        return str(env[m.group(1)])
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a) for a in args]


def container_env_names(container, docs):
    """Names a container's environment holds: envFrom ConfigMaps and env entries."""
    names = set()
    for ef in container.get("envFrom", []):
        names |= set(find(docs, "ConfigMap", ef["configMapRef"]["name"])["data"])
    names |= {e["name"] for e in container.get("env", [])}
    return names
