# Helpers shared by scripts/bench.sh, scripts/logs_bench.sh and scripts/log_cost.sh (sourced, not
# run): free loopback ports, waiting for an HTTP endpoint, an admin API call, and a throwaway
# Postgres cluster in a directory.
# PGBIN is the newest installed Postgres (or KEYGATE_PG_BIN); empty when none is installed.

need() { command -v "$1" >/dev/null 2>&1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 300); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }
# Postgres refuses to run as root: as root, its commands run as the postgres user.
run_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; else "$@"; fi; }

admin() { # method url token [json]: an admin API call, printing the answer
  python3 - "$@" <<'PY'
import json, sys, urllib.request
method, url, token = sys.argv[1], sys.argv[2], sys.argv[3]
data = sys.argv[4].encode() if len(sys.argv) > 4 else None
req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json", "authorization": "Bearer " + token})
print(urllib.request.urlopen(req).read().decode())
PY
}

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -n "${KEYGATE_PG_BIN:-}" ] && PGBIN="$KEYGATE_PG_BIN"

start_pg() { # dir port [extra server options]: a fresh trust-auth cluster in dir/data
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
  run_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  run_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -o "-p $port -c listen_addresses=127.0.0.1 -k $dir $*" start >/dev/null
}

stop_pg() { # dir
  if [ -f "$1/data/postmaster.pid" ]; then
    run_pg "$PGBIN/pg_ctl" -D "$1/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}
