#!/usr/bin/env bash
# The browser of the web app's test (tests/test_app_browser.py): Debian's `chromium` package, driven by
# Playwright through its executable path. Browser downloads (playwright install) do not work offline and
# are not used. Nothing to do when a Chromium is already there (or OPENSORA_CHROMIUM names one).
set -euo pipefail
if [ -n "${OPENSORA_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "error: the browser test needs Chromium: install it (Debian/Ubuntu: sudo apt-get install chromium)" \
     "or set OPENSORA_CHROMIUM=/path/to/chromium" >&2
exit 2
