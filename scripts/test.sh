#!/usr/bin/env bash
# Installs what the test suite needs (pcscd with the vpcd reader driver,
# ffmpeg), starts pcscd, and runs every test.
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

cargo test --workspace --locked "$@"
