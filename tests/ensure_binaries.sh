#!/usr/bin/env bash
# Makes sure the service binaries and the browser the tests start are on this machine; installs them with apt-get when
# possible, otherwise stops naming the package to install.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || [[ " ${need[*]} " == *" mosquitto "* ]] || need+=(mosquitto)
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if ! command -v initdb >/dev/null 2>&1 && [ -z "$pg_bin" ]; then need+=(postgresql); fi
# The dashboard tests drive Debian's Chromium headless (never a downloaded browser build).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Benchmarks drive HTTP load from a non-Python client.
if [ "${EDGEFLEET_NEED_WRK:-0}" = 1 ]; then command -v wrk >/dev/null 2>&1 || need+=(wrk); fi
# PostgreSQL refuses to run as root: tests started as root run the server as an unprivileged user.
ensure_pg_user() {
  local user="${EDGEFLEET_PG_USER:-postgres}"
  if [ "$(id -u)" = 0 ] && ! id "$user" >/dev/null 2>&1; then
    echo "creating unprivileged user $user for the test PostgreSQL servers" >&2
    useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
  fi
}
if [ ${#need[@]} -eq 0 ]; then ensure_pg_user; exit 0; fi
echo "installing test services: ${need[*]}" >&2
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "missing: ${need[*]} — install these packages (Debian/Ubuntu: apt-get install ${need[*]})" >&2
  exit 1
fi
ensure_pg_user
