#!/usr/bin/env bash
# kernels/dev/wip_variants.sh BUILD_DIR OUT_DIR PATCH...: the variant builds of a GPU session's
# A/B from the unmeasured patches in kernels/dev/wip: OUT_DIR/head (BUILD_DIR's test_backend_ops
# and sluice as built, i.e. the tree's kernels) and, for each PATCH in order, applied on top of
# the ones before it, OUT_DIR/NAME (NAME: the patch's file name without .patch) built by
# variants.sh from the one kernels/cuda/*.cu the patch changes. The patches are taken off
# again at the end (also on failure); pack with
#   kernels/dev/pack.sh BUILD_DIR .gpu/all.tar.xz OUT_DIR head v89 v90 ...
# and time them with VARIANTS="head v89 ..." gpu_run.sh … ab:OP (the default build stays the tree's).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:?BUILD_DIR}; out=${2:?OUT_DIR}; shift 2
[ $# -gt 0 ] || { echo "wip_variants.sh: no patch given" >&2; exit 1; }
mkdir -p "$out/head"
cp "$build/bin/test_backend_ops" "$build/bin/sluice" "$out/head/"
applied=()
undo() { for ((i = ${#applied[@]} - 1; i >= 0; i--)); do git apply -R "${applied[i]}"; done; }
trap undo EXIT
for p in "$@"; do
  cu=$(git apply --numstat "$p" | awk '{print $3}' | grep '^kernels/cuda/.*\.cu$' || true)
  [ "$(echo "$cu" | grep -c .)" = 1 ] || { echo "wip_variants.sh: $p changes $(echo $cu | wc -w) .cu files (one needed)" >&2; exit 1; }
  git apply "$p"
  applied+=("$p")
  kernels/dev/variants.sh "$build" "$cu" "$out" "$(basename "$p" .patch)="
done
