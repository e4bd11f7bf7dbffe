#!/usr/bin/env bash
# Installs what the tests need and runs them: the package with its [test] extra, a running
# PostgreSQL and Redis on 127.0.0.1 (started, or installed with apt on a machine that has
# none), the import-linter contracts, mypy, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"

if ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing PostgreSQL (tests run the metadata store on it)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    # a throwaway test server: trust connections from this machine only
    sed -i -E 's/(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/; s/(local\s+all\s+all\s+)\S+/\1trust/' \
      /etc/postgresql/*/main/pg_hba.conf
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -q && break; sleep 0.5; done
fi

# Redis: the Redis Streams connectors and shared rate-limit counters are tested against it.
if ! (command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1); then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing Redis (tests use it)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
  for _ in $(seq 1 20); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.25; done
fi

lint-imports
python3 -m mypy src/twingraph
python3 -m pytest -q "$@"
