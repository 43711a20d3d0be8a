#!/usr/bin/env bash
# Installs what the test suite needs (pcscd with the vpcd reader driver,
# ffmpeg, promtool, Python's prometheus_client), starts pcscd, and runs
# every test.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# pcscd, libpcsclite-dev and vsmartcard-vpcd; starts pcscd and waits for
# the vpcd readers.
scripts/ensure-pcscd.sh

# The stream tests make real MPEG-TS with ffmpeg and check it with ffprobe.
if ! command -v ffmpeg > /dev/null || ! command -v ffprobe > /dev/null; then
    echo "test.sh: installing ffmpeg" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q ffmpeg
fi

# headend/tests/it/metrics.rs checks the shipped alert rules with promtool
# (Debian's prometheus package; the server is not started) and parses
# /metrics with Python's prometheus_client, a parser independent of ours.
if ! command -v promtool > /dev/null; then
    echo "test.sh: installing promtool (package prometheus)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends prometheus
fi
if ! python3 -c 'import prometheus_client' 2> /dev/null; then
    echo "test.sh: installing Python's prometheus_client" >&2
    # A Debian python3 refuses pip without --break-system-packages (PEP 668).
    python3 -m pip install --quiet prometheus_client ||
        python3 -m pip install --quiet --break-system-packages prometheus_client
fi

cargo test --workspace --locked "$@"
