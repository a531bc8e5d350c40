#!/usr/bin/env bash
# Install (from Debian packages) everything the test-suite needs beyond Python packages:
# the schedulers and sshd for the real-service tests, and Chromium for the browser test.
# Idempotent; run as root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/testclusters.sh" install all
if ! command -v chromium >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends chromium >/dev/null
fi
