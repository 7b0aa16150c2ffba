#!/usr/bin/env bash
# Installs Debian's chromium (the headless browser that renders the status page in
# tests/integration/test_views.py) when /usr/bin/chromium is missing. Needs root (or
# sudo); does nothing when chromium is already there. Recommends are skipped (no udev,
# mesa, printing); the two font packages are named so the page's text renders on a
# bare image.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-chromium: need root or sudo" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core fonts-liberation
/usr/bin/chromium --version
