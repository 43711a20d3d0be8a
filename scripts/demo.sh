#!/usr/bin/env bash
# The end-to-end demo: headend -> virtual card on the real pcscd -> receiver -> clear video.
set -euo pipefail
echo "demo: the end-to-end demo arrives with the stream engine (issue 5); it is not available yet." >&2
exit 1
