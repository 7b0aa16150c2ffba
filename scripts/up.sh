#!/usr/bin/env bash
# Sets up (first time) and starts the local stack from the Procfile: a Kafka broker
# on 127.0.0.1:9092 and the spillway worker (Thrift on :4141, web on :6066).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/honcho start "$@"
