#!/usr/bin/env bash
# Sets up (first time) and runs the whole test suite. The integration tests start
# their own real Apache Kafka broker (fetched by devtools/kafka.py) on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
