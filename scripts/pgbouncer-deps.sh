#!/usr/bin/env bash
# Installs Debian's PgBouncer for the PgBouncer tests when it is missing and we
# may (root, Debian's packages reachable). Never fatal: without it those tests
# are skipped, saying why.
set -uo pipefail
if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "pgbouncer-deps: PgBouncer is missing; its tests are skipped (apt-get install pgbouncer)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq pgbouncer >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq pgbouncer >/dev/null 2>&1 \
    || echo "pgbouncer-deps: installing PgBouncer failed; its tests are skipped" >&2
fi
# Debian starts a PgBouncer service on install; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop pgbouncer >/dev/null 2>&1; fi
exit 0
