#!/usr/bin/env bash
# Installs everything spillway needs on a fresh machine: a virtualenv with the
# pinned Python packages, and Apache Kafka's broker from Maven Central (cached).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -m devtools.kafka fetch >/dev/null
.venv/bin/python -m devtools.flume fetch >/dev/null   # Flume's own agent and SDK, for the clients in tests
bash scripts/install-chromium.sh   # Debian's chromium, for the status page test (root: apt-get)
# FUSE (libfuse3 + fusermount3) for the power-cut filesystem of tests/powercut.py (mfusepy
# loads libfuse3.so.3 through ctypes); skipped when already there. Needs root (or sudo).
if ! command -v fusermount3 >/dev/null || ! dpkg -s libfuse3-3 >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends fuse3 libfuse3-3
fi
# HAProxy (Debian's package), for the scale-out test of two nodes behind it (tests/integration/test_scale_out.py).
if ! command -v haproxy >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends haproxy
fi
