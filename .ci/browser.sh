#!/usr/bin/env bash
# Debian's chromium for the dashboard's browser test (tests/dashboard), plus a CJK
# font so the Chinese screenshots are legible. Playwright's own browser download is
# never used: the test launches /usr/bin/chromium.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 || ! fc-list :lang=zh 2>/dev/null | grep -q .; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null
fi
chromium --version
