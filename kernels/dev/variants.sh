#!/usr/bin/env bash
# kernels/dev/variants.sh BUILD_DIR SOURCE OUT_DIR NAME=FLAGS...: builds one
# test_backend_ops per NAME with SOURCE (a .cu of kernels/cuda, e.g. moe.cu)
# compiled with FLAGS added (its #ifndef-guarded tuning macros, e.g.
# "-DMOE_GV_J8=4 -DMOE_GV_GLU_RW8=8"), everything else as BUILD_DIR built it,
# into OUT_DIR/NAME/test_backend_ops. One GPU call can then time every variant
# (test_backend_ops --perf --filter OP) instead of one build per call:
#   kernels/dev/variants.sh build kernels/cuda/moe.cu /tmp/v j84="-DMOE_GV_J8=4" \
#       bps4="-DMOE_GV_BLOCKS_PER_SM=4"
# BUILD_DIR must be an up-to-date Ninja build with SLUICE_CUDA=ON.
set -euo pipefail
build=$(cd "${1:?BUILD_DIR}" && pwd); src=${2:?SOURCE}; out=${3:?OUT_DIR}; shift 3
base=$(basename "$src")
obj=kernels/CMakeFiles/kern_cuda.dir/cuda/$base.o
cd "$build"
compile=$(ninja -t commands "$obj" | tail -1)
link=$(ninja -t commands bin/test_backend_ops | tail -1)
[ -n "$compile" ] && [ -n "$link" ] || { echo "variants.sh: $build has no $obj or test_backend_ops" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
for v in "$@"; do
  name=${v%%=*}; flags=${v#*=}
  [ "$name" != "$v" ] || { echo "variants.sh: '$v' is not NAME=FLAGS" >&2; exit 1; }
  d=$out/$name
  mkdir -p "$d"
  cp kernels/libkern_cuda.a "$d/"
  # the object with the flags (no depfile), swapped into a copy of the library
  c=${compile/ -o $obj/ $flags -o $d/$base.o}
  c=${c/-MD -MT $obj -MF $obj.d/}
  eval "$c"
  (cd "$d" && ar r libkern_cuda.a "$base.o")
  l=${link//kernels\/libkern_cuda.a/$d/libkern_cuda.a}
  eval "${l/-o bin\/test_backend_ops/-o $d/test_backend_ops}"
  echo "$name: $flags -> $d/test_backend_ops"
done
