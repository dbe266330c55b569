#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on 127.0.0.1 for the PostgreSQL store tests and prints the
# URL to reach it; .ci/run exports it as RAMPART_TEST_POSTGRES. Installs Debian's server
# package first when no server is installed. With RAMPART_TEST_POSTGRES already set, uses
# that server instead and starts nothing.
#
#   url=$(bash .ci/postgres.sh start DIR)   # cluster in DIR on a free port (or PGPORT)
#   bash .ci/postgres.sh stop DIR           # stops the cluster in DIR, if one was started
set -euo pipefail
cmd=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}
# A port nothing listens on (the kernel's choice, when python3 is here), unless PGPORT says.
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
  else
    echo 54329
  fi
}
port=${PGPORT:-$(free_port)}

if [ "$cmd" = start ] && [ -n "${RAMPART_TEST_POSTGRES:-}" ]; then
  echo "$RAMPART_TEST_POSTGRES"
  exit 0
fi

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# PostgreSQL refuses to run as root: run its programs as the `postgres` user then.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    if [ -z "$(bindir)" ]; then
      echo "installing PostgreSQL from Debian's packages" >&2
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >&2
    fi
    bin=$(bindir)
    [ -n "$bin" ] || { echo "no PostgreSQL server found after installing it" >&2; exit 1; }
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >&2
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    bin=$(bindir)
    [ -n "$bin" ] && [ -d "$dir/data" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast stop >&2 || true
    ;;
  *)
    echo "usage: postgres.sh start|stop DIR" >&2
    exit 2
    ;;
esac
