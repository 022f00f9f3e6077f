#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests when it is missing.
# Playwright's own browser download cannot work here (no network but the
# package registries), so the tests drive /usr/bin/chromium instead.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "browser-deps: /usr/bin/chromium is missing and we are not root; run: sudo apt-get install chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
