#!/usr/bin/env bash
# kernels/dev/ptxas_check.sh [FILE.cu ...]: what ptxas says about each kernel of
# kernels/cuda (all .cu files by default) for sm_90a, without a GPU: the wgmma
# pipelines it serialised or waited on (C7510-C7519, "Potential Performance
# Loss": v69 found the overlapped FP8 MoE GEMM's every product waited for this
# way) and the registers spilled, each with its kernel's demangled name. Prints
# nothing else; exits 1 when a serialisation message appears.
set -uo pipefail
cd "$(dirname "$0")/../.."
# the toolkit on PATH, else where CMakeLists.txt looks for it
bin=$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(kernels/cuda/*.cu)
found=0
for f in "${files[@]}"; do
  b=$(basename "$f" .cu)
  "$bin/nvcc" -gencode arch=compute_90a,code=sm_90a -std=c++17 -O3 -Icommon -Ikernels/cuda -Ikernels \
    -ptx "$f" -o "$tmp/$b.ptx" || { echo "$f: nvcc failed"; exit 2; }
  "$bin/ptxas" -arch=sm_90a -O3 -v "$tmp/$b.ptx" -o "$tmp/$b.cubin" > "$tmp/$b.log" 2>&1 || { cat "$tmp/$b.log"; exit 2; }
  # serialisation: "(C75xx) ... in function '_Z...'"
  if grep -q "(C751[0-9])" "$tmp/$b.log"; then
    found=1
    grep "(C751[0-9])" "$tmp/$b.log" | sed -E "s/.*\((C751[0-9])\).*function '([^']*)'.*/$b: \1 \2/" | sort -u | c++filt
  fi
  # spills: the "Compiling entry function" line, then its "N bytes spill stores"
  awk -v f="$b" '/Compiling entry function/ { match($0, /_Z[A-Za-z0-9_]+/); k = substr($0, RSTART, RLENGTH) }
                 /bytes spill stores/ && $5 + 0 > 0 { print f ": spills " $5 " bytes " k }' "$tmp/$b.log" | c++filt
done
exit $found
