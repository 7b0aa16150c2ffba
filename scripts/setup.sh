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
bash scripts/install-chromium.sh   # Debian's chromium, for the status page test (root: apt-get)
