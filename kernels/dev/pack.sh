#!/usr/bin/env bash
# kernels/dev/pack.sh BUILD_DIR OUT.tar.xz [VARIANTS_DIR NAME...]: what gpu_run.sh runs, in one
# file to carry (the device call's 64 MiB): BUILD_DIR's sluice and GPU test binaries, and each
# NAME's variant build (variants.sh: VARIANTS_DIR/NAME/test_backend_ops) as NAME_tbo, stripped
# and xz-compressed (~10 MB with five variants); a NAME folder that also holds a sluice (a
# copy of an earlier build's, e.g. HEAD's before a patch) carries it as NAME_sluice, e.g.
#   kernels/dev/pack.sh /tmp/build-gpu .gpu/all.tar.xz /tmp/v gold v82
set -euo pipefail
build=${1:?BUILD_DIR}; out=${2:?OUT.tar.xz}; shift 2
vdir=${1:-}; [ $# -gt 0 ] && shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for b in sluice test_backend_ops test_engine_gpu test_engine_gpu_cache test_model_trace; do
  cp "$build/bin/$b" "$tmp/"
done
for n in "$@"; do
  cp "$vdir/$n/test_backend_ops" "$tmp/${n}_tbo"
  [ ! -f "$vdir/$n/sluice" ] || cp "$vdir/$n/sluice" "$tmp/${n}_sluice"
done
strip "$tmp"/*
mkdir -p "$(dirname "$out")"
tar cf - -C "$tmp" . | xz -T2 --lzma2=preset=6,dict=128MiB > "$out"
echo "$out: $(du -h "$out" | cut -f1), $(ls "$tmp" | tr '\n' ' ')"
