#!/usr/bin/env bash
# Installs what the test suite needs, starts pcscd, and runs every test.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/ensure-pcscd.sh ]; then
    scripts/ensure-pcscd.sh
fi

cargo test --workspace --locked "$@"
