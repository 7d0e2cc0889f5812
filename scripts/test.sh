#!/usr/bin/env bash
# Set everything up (idempotent), then run the test suite. Extra arguments go to
# pytest, e.g. `scripts/test.sh -m "not integration"` for the fast tests only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh" all

# What only the tests need from Debian: PostgreSQL (the metadata-database option is
# tested against a real server), Chromium (the UI view is tested in a browser),
# Prometheus for its promtool (the shipped scrape and rule files are checked with it;
# the package's service is not started), and OpenSSH's server (Horovod reaches its hosts
# over ssh: tests/test_horovod_ssh.py starts its own sshd on loopback addresses; the
# package's service is not used).
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[test] installing ${missing[*]} (Debian packages)" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cd "$ROOT"
exec "$ROOT/.venv/airflow/bin/python" -m pytest "$@"
