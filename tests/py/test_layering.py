"""The layering of the source tree (docs/architecture.md, "Who may include whom").

Two checks, both on the tree as it is, no GPU and no running process:

1. Includes. Every `#include "..."` in common/, kernels/, proto/, worker/ and router/ is
   resolved to the folder that holds the header (header names are unique across these
   folders; that is checked too) and must be in the including folder's allow-list below.
   The allow-lists mirror the CMake target graph: a folder includes only headers of the
   targets its target links. A failure names the file, the header and the rule.

2. Links. The router-only and engine-only unit tests (SL_ROUTER_ONLY_TESTS,
   SL_ENGINE_ONLY_TESTS in tests/CMakeLists.txt) are linked from the build tree's
   link lines (build.ninja, or CMakeFiles/<t>.dir/link.txt for Makefiles): a router test
   links no worker_* or kern*/kernels library and no CUDA library (cuBLAS, cudart,
   NCCL); an engine test links no backend, model, runner, server, group or router library.
   Since the test programs link the router/engine libraries with their whole transitive
   closure, this is the check that the libraries themselves stay apart.

Run: pytest tests/py/test_layering.py (ctest -L layout). SLUICE_BIN names the build tree.
"""
import os
import re

import pytest

SRC = os.environ.get("SLUICE_SRC") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOTS = ("common", "kernels", "proto", "worker", "router")
SOURCE_EXT = (".c", ".h", ".cu", ".cuh")
HEADER_EXT = (".h", ".cuh")
# Headers generated into the build tree, by the folder whose CMakeLists makes them.
GENERATED = {"sluice.pb-c.h": "proto", "sl_version.h": "common"}

# Folder -> the other folders whose headers it may include (its own always allowed).
ROUTER_LIBS = ("router/http", "router/text", "router/cluster", "router/api", "router/bench")
ALLOW = {
    "common": (),
    "common/grammar": ("common",),  # sl_grammar: used by both halves, so it sits under common/
    "kernels": ("common",),
    "kernels/cpu": ("kernels", "common"),
    "kernels/cuda": ("kernels", "common"),
    "kernels/comm": ("kernels", "kernels/cuda", "common"),  # the NCCL path takes the CUDA stream
    "kernels/dev": ("kernels", "kernels/cpu", "kernels/cuda", "common"),
    "proto": ("common",),
    "worker/model": ("kernels", "kernels/comm", "common"),
    "worker/engine": ("common", "common/grammar"),  # never the backend: scheduler and caches are CPU-only
    "worker/runner": ("worker/model", "worker/engine", "kernels", "common"),
    "worker/server": ("worker/pd", "worker/runner", "worker/model", "worker/engine", "kernels", "proto",
                      "common", "common/grammar"),
    "worker/group": ("worker/runner", "worker/model", "worker/engine", "kernels", "kernels/comm", "common"),
    "worker/pd": ("worker/runner", "worker/model", "worker/engine", "kernels", "kernels/comm", "proto",
                  "common"),
    "worker/cli": ("worker/server", "worker/group", "worker/pd", "worker/runner", "worker/model", "worker/engine",
                   "kernels", "kernels/comm", "proto", "common", "common/grammar"),
    "router/http": ("common",),
    "router/text": ("common",),  # no HTTP, API or cluster: text is usable on its own
    "router/cluster": ("proto", "common"),
    "router/bench": ("common",),
    "router/api": ("router/http", "router/text", "router/cluster", "proto", "common", "common/grammar"),
    "router/cli": ROUTER_LIBS + ("proto", "common"),
}
# The sluice executable (router/cli) joins both halves through exactly these worker headers.
ALLOW_HEADERS = {"router/cli": {"worker_cmd.h": "worker/cli", "engine_flags.h": "worker/cli"}}

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def walk_sources(ext):
    for root in ROOTS:
        for d, dirs, files in os.walk(os.path.join(SRC, root)):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(ext):
                    yield os.path.relpath(d, SRC), f


def header_folders():
    """header name -> [folders that hold it]"""
    where = {}
    for d, f in walk_sources(HEADER_EXT):
        where.setdefault(f, []).append(d)
    for name, d in GENERATED.items():
        where.setdefault(name, []).append(d)
    return where


def test_header_names_unique():
    dup = {h: ds for h, ds in header_folders().items() if len(ds) > 1}
    assert not dup, "header names must be unique across %s (includes are resolved by name): %s" % (
        "/, ".join(ROOTS), "; ".join("%s in %s" % (h, ", ".join(ds)) for h, ds in sorted(dup.items())))


def test_every_folder_has_rules():
    folders = {d for d, _ in walk_sources(SOURCE_EXT)}
    missing = sorted(folders - set(ALLOW))
    assert not missing, "folders without include rules in tests/py/test_layering.py ALLOW: %s" % missing


def test_includes_follow_layering():
    where = header_folders()
    bad = []
    for d, f in walk_sources(SOURCE_EXT):
        path = os.path.join(d, f)
        with open(os.path.join(SRC, path), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        for m in INCLUDE_RE.finditer(text):
            inc = m.group(1)
            name = os.path.basename(inc)
            line = text.count("\n", 0, m.start()) + 1
            if name not in where:
                bad.append('%s:%d: #include "%s": no such header in %s/' % (path, line, inc, "/, ".join(ROOTS)))
                continue
            target = where[name][0]
            if target == d or target in ALLOW.get(d, ()):
                continue
            if ALLOW_HEADERS.get(d, {}).get(name) == target:
                continue
            bad.append('%s:%d: #include "%s" (%s/): %s/ may include only %s' % (
                path, line, inc, target, d, ", ".join(ALLOW.get(d, ())) or "its own headers"))
    assert not bad, "layering violations:\n" + "\n".join(bad)


# ---- links ----

def build_dir():
    b = os.environ.get("SLUICE_BIN")
    if not b:
        pytest.skip("SLUICE_BIN not set (run through ctest)")
    return os.path.dirname(os.path.dirname(b))


def cmake_list(name):
    with open(os.path.join(SRC, "tests", "CMakeLists.txt")) as fh:
        m = re.search(r"set\(%s\s+([^)]*)\)" % name, fh.read())
    assert m, "tests/CMakeLists.txt: no set(%s ...)" % name
    return m.group(1).split()


def link_line(bdir, exe):
    """The libraries exe links, from build.ninja or the Makefiles' link.txt."""
    ninja = os.path.join(bdir, "build.ninja")
    if os.path.exists(ninja):
        with open(ninja) as fh:
            text = fh.read()
        m = re.search(r"^build bin/%s: C_EXECUTABLE_LINKER\S*(.*?)\n(?=\S|\Z)" % re.escape(exe), text, re.M | re.S)
        assert m, "build.ninja has no link step for bin/%s" % exe
        libs = re.search(r"^\s+LINK_LIBRARIES = (.*)$", m.group(1), re.M)
        return libs.group(1) if libs else ""
    txt = os.path.join(bdir, "tests", "CMakeFiles", exe + ".dir", "link.txt")
    assert os.path.exists(txt), "no build.ninja in %s and no %s" % (bdir, txt)
    with open(txt) as fh:
        return fh.read()


FORBIDDEN_ROUTER = re.compile(r"libworker_\w*|libkern\w*|cublas\w*|cudart\w*|libnccl\w*|libcuda\w*")
FORBIDDEN_ENGINE = re.compile(r"libworker_(?!engine)\w*|libkern\w*|librouter_\w*|cublas\w*|cudart\w*|libnccl\w*")


@pytest.mark.parametrize("group,pattern", [("SL_ROUTER_ONLY_TESTS", FORBIDDEN_ROUTER),
                                           ("SL_ENGINE_ONLY_TESTS", FORBIDDEN_ENGINE)])
def test_links_follow_layering(group, pattern):
    bdir = build_dir()
    bad = []
    for exe in cmake_list(group):
        found = sorted(set(pattern.findall(link_line(bdir, exe))))
        if found:
            bad.append("%s (%s) links %s" % (exe, group, ", ".join(found)))
    assert not bad, "link layering violations:\n" + "\n".join(bad)
