# kernels/dev/sass_mix.py FILE.cu NAME [NAME ...]: the SASS of the kernels of kernels/cuda/FILE.cu
# whose mangled names contain NAME, without a GPU: each one's instruction count, its longest
# loop (the widest backward branch) and that loop's opcode mix, e.g. how many of a chunk's
# instructions are HMMA against the LDS and conversions around them (NOTES v85, v86):
#   python3 kernels/dev/sass_mix.py kernels/cuda/gdn.cu k_gdn_scanILi128
# cuobjdump: $CUOBJDUMP, else on PATH, else next to nvcc; the dev box's toolkit has none, PyPI
# has it: pip download --no-deps nvidia-cuda-cuobjdump, unzip, nvidia/cu13/bin/cuobjdump.
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ADDR = re.compile(r"/\*([0-9a-f]{4,6})\*/")
OP = re.compile(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)")


def tool(name, env):
    found = os.environ.get(env) or shutil.which(name)
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    return found or os.path.join(os.path.dirname(nvcc), name)


def functions(sass):
    """{mangled name: its instruction lines}"""
    out, name = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name and ADDR.search(line) and OP.search(line):
            out[name].append(line)
    return out


def longest_loop(lines):
    addr = [int(ADDR.search(l).group(1), 16) for l in lines]
    best = None
    for a, l in zip(addr, lines):
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s+)?(0x[0-9a-f]+)", l)
        if m and int(m.group(1), 16) < a and (best is None or a - int(m.group(1), 16) > best[1] - best[0]):
            best = (int(m.group(1), 16), a)
    return [l for a, l in zip(addr, lines) if best and best[0] <= a <= best[1]]


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: sass_mix.py FILE.cu NAME [NAME ...]")
    src, names = sys.argv[1], sys.argv[2:]
    nvcc, cuobjdump = tool("nvcc", "NVCC"), tool("cuobjdump", "CUOBJDUMP")
    if not os.path.exists(cuobjdump):
        sys.exit(f"sass_mix.py: no cuobjdump at {cuobjdump} (set CUOBJDUMP; see the header)")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        inc = [f"-I{os.path.join(ROOT, d)}" for d in ("common", "kernels/cuda", "kernels")]
        subprocess.run([nvcc, "-gencode", "arch=compute_90a,code=sm_90a", "-std=c++17", "-O3", *inc, "-cubin", src,
                        "-o", cubin], check=True)
        sass = subprocess.run([cuobjdump, "-sass", cubin], check=True, capture_output=True, text=True).stdout
    found = False
    for fn, lines in functions(sass).items():
        if not any(n in fn for n in names):
            continue
        found = True
        loop = longest_loop(lines)
        mix = collections.Counter(OP.search(l).group(1) for l in loop)
        print(f"{fn}: {len(lines)} instructions; longest loop {len(loop)}: "
              + ", ".join(f"{k} {v}" for k, v in mix.most_common(12)))
    if not found:
        sys.exit(f"sass_mix.py: no kernel of {src} matches {' '.join(names)}")


main()
