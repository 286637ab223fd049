#!/usr/bin/env bash
# Request logs at scale: how fast a filtered log page and the statistics answer over many rows.
#
# Starts a throwaway Postgres (and Redis) on loopback ports, runs `keygate migrate` (so
# request_logs is partitioned by day with every index the migrations add), seeds LOGS_BENCH_ROWS
# rows over the last 7 days across 20 services (svc-00..svc-19, created through the admin API),
# 100 access keys, 100 upstream key ids and 10 models with one INSERT ... SELECT generate_series,
# then prints the median and p95 of LOGS_BENCH_RUNS runs of:
#   - SQL: a filtered log page (service, time, newest first, 50 rows), a sparser filter, and a raw
#     aggregation over one day (what the rollups replace); plus each line of LOGS_BENCH_SQL_FILE;
#   - HTTP: each path in LOGS_BENCH_URLS, called with curl on a `keygate serve` against that
#     database, logged in as admin (ADMIN_PASSWORD).
# The gateway's own partition upkeep makes the past days' partitions: one row per day is written
# first, keygate starts and moves them out of DEFAULT into new day partitions, and only then the
# bulk rows go in (straight into their partitions).
#
#   scripts/logs_bench.sh                          # 100000 rows, builds nothing: see LOGS_BENCH_BIN
#   LOGS_BENCH_ROWS=1000000 LOGS_BENCH_BIN=target/release scripts/logs_bench.sh
#   LOGS_BENCH_URLS='/admin/logs?service=svc-07&limit=50 /admin/stats?service=svc-07&group_by=model&bucket=1h' \
#     scripts/logs_bench.sh
#   LOGS_BENCH_SEED_SQL=fill_rollups.sql ...       # extra SQL run after seeding (e.g. backfill rollups)
#   LOGS_BENCH_SQL_FILE=queries.sql ...            # more queries to time, one a line
#   LOGS_BENCH_KEEP=1 ...                          # keep everything running at the end (Ctrl-C stops)
#
# LOGS_BENCH_BIN is the directory holding the `keygate` binary (default: the release build in
# CARGO_TARGET_DIR or ./target; run `cargo build --release --bin keygate` first). Paths in
# LOGS_BENCH_URLS are space-separated; a non-2xx answer is reported beside its timing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROWS="${LOGS_BENCH_ROWS:-100000}"
RUNS="${LOGS_BENCH_RUNS:-20}"
URLS="${LOGS_BENCH_URLS:-/admin/logs?service=svc-07&limit=50 /admin/stats?service=svc-07&group_by=model&bucket=1h}"
BIN="${LOGS_BENCH_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}"
PASSWORD="${ADMIN_PASSWORD:-logs-bench-password}"
WORK=$(mktemp -d /tmp/keygate-logs-bench.XXXXXX)
chmod 755 "$WORK"   # the postgres user must reach its data dir inside
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  stop_pg "$WORK/pg"
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "logs_bench: $*" >&2; }

[ -x "$BIN/keygate" ] || { say "no keygate binary in $BIN (set LOGS_BENCH_BIN)"; exit 1; }
if [ -z "$PGBIN" ] || ! need redis-server; then
  say "needs the postgresql and redis-server packages (scripts/test.sh installs them as root)"
  exit 1
fi

PG_PORT=$(free_port); REDIS_PORT=$(free_port); PORT=$(free_port)
start_pg "$WORK/pg" "$PG_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null & PIDS+=($!)
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT" JWT_SECRET=logs-bench-jwt-secret-0123456789
export ADMIN_PASSWORD="$PASSWORD" PORT RUST_LOG="${RUST_LOG:-info}"
# The services point at 127.0.0.1, which the SSRF guard refuses unless allowed.
export KEYGATE__EGRESS__ALLOW=127.0.0.0/8,::1/128
KEYGATE_ENCRYPTION_KEY="$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
export KEYGATE_ENCRYPTION_KEY
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }

say "migrating"
"$BIN/keygate" migrate >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log" >&2; exit 1; }

# One INSERT ... SELECT over `src` (columns i and ts): everything else derives from i.
seed() { # from-clause
  psql -o /dev/null -c "SELECT setseed(0.42)" -c "
    INSERT INTO request_logs (id, ts, service, access_key_id, upstream_key_id, model, upstream_model,
      path, status, attempts, latency_ms, ttft_ms, prompt_tokens, completion_tokens,
      cache_read_tokens, cost_micros, error_kind, streamed, cancelled, estimated, client_format,
      upstream_format, tried)
    SELECT
      -- time-ordered ids like uuid v7: the row's milliseconds in the first 48 bits
      encode(overlay(uuid_send(gen_random_uuid()) PLACING
        substring(int8send((extract(epoch FROM ts) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 'hex')::uuid,
      ts, 'svc-' || lpad((i % 20)::text, 2, '0'), 1 + (i * 7) % 100, 1 + (i * 13) % 100,
      'model-' || (i % 10), 'model-' || (i % 10), 'chat/completions',
      s.status, CASE WHEN s.status = 200 THEN 1 ELSE 2 END, 100 + (random() * 2000)::int,
      CASE WHEN i % 3 = 0 THEN 50 + (random() * 300)::int END, 10 + (random() * 2000)::int,
      (random() * 500)::int, CASE WHEN i % 4 = 0 THEN (random() * 1000)::int END,
      (random() * 20000)::int, CASE WHEN s.status <> 200 THEN 'upstream_status' END,
      i % 3 = 0, false, i % 17 = 0, 'openai', 'openai', '[' || (1 + (i * 13) % 100) || ']'
    FROM (SELECT i, ts, CASE WHEN i % 97 = 0 THEN 500 WHEN i % 41 = 0 THEN 429 ELSE 200 END AS status
          FROM $1) s"
}

say "one row per past day, for the gateway's upkeep to partition"
seed "(SELECT d AS i, now() - d * interval '1 day' AS ts FROM generate_series(1, 7) d) src"
mkdir -p "$WORK/gw"
(cd "$WORK/gw" && exec "$BIN/keygate" >"$WORK/gw/log" 2>&1) & KG=$!; PIDS+=($KG)
BASE="http://127.0.0.1:$PORT"
wait_http "$BASE/healthz"
for _ in $(seq 1 300); do
  [ "$(psql -At -c 'SELECT count(*) FROM request_logs_default')" = 0 ] && break; sleep 0.1
done
[ "$(psql -At -c 'SELECT count(*) FROM request_logs_default')" = 0 ] || { say "DEFAULT was not emptied"; exit 1; }
say "partitions: $(psql -At -c "SELECT count(*) FROM pg_inherits WHERE inhparent = 'request_logs'::regclass")"

say "seeding $ROWS rows"
started=$(date +%s)
seed "(SELECT i, now() - random() * interval '7 days' AS ts FROM generate_series(8, $ROWS) i) src"
[ -n "${LOGS_BENCH_SEED_SQL:-}" ] && psql -f "$LOGS_BENCH_SEED_SQL"
psql -c "VACUUM ANALYZE"
say "seeded in $(( $(date +%s) - started ))s; in DEFAULT: $(psql -At -c 'SELECT count(*) FROM request_logs_default')"

TOKEN=$(python3 - "$BASE" "$PASSWORD" <<'PY'
import json, sys, urllib.request
base, password = sys.argv[1], sys.argv[2]
def call(path, body, token=None):
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = "Bearer " + token
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=h)
    return json.load(urllib.request.urlopen(req))
token = call("/admin/auth/login", {"username": "admin", "password": password})["access_token"]
for n in range(20):
    call("/admin/services", {"slug": "svc-%02d" % n, "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}, token)
print(token)
PY
)

# Median and p95 of a list of milliseconds on stdin, with a label.
stats() { python3 -c '
import statistics, sys
v = sorted(float(x) for x in sys.stdin.read().split())
print("%-58s median %8.2f ms  p95 %8.2f ms  (%d runs)" % (sys.argv[1][:58], statistics.median(v), v[int(0.95 * (len(v) - 1))], len(v)))' "$1"; }

time_sql() { # label query: client-side time of each run, as psql reports it
  { echo '\timing on'; echo '\o /dev/null'; for _ in $(seq 1 "$RUNS"); do echo "$2;"; done; } \
    | psql | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | stats "SQL $1"
}

time_url() { # path
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" "$BASE$1")
  for _ in $(seq 1 "$RUNS"); do
    curl -s -o /dev/null -w '%{time_total}\n' -H "authorization: Bearer $TOKEN" "$BASE$1"
  done | awk '{print $1 * 1000}' | stats "GET $1 -> $code"
}

echo "request_logs: $(psql -At -c 'SELECT count(*) FROM request_logs') rows"
time_sql "log page: one service, newest 50" "SELECT id, ts, service, model, status, latency_ms FROM request_logs WHERE service = 'svc-07' AND ts < now() ORDER BY ts DESC, id DESC LIMIT 50"
time_sql "log page: service + model + 5xx, 3 days" "SELECT id, ts, service, model, status, latency_ms FROM request_logs WHERE service = 'svc-07' AND model = 'model-7' AND status >= 500 AND ts >= now() - interval '3 days' ORDER BY ts DESC, id DESC LIMIT 50"
time_sql "raw hourly totals of one service over a day" "SELECT date_trunc('hour', ts) AS h, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_micros) FROM request_logs WHERE service = 'svc-07' AND ts >= now() - interval '1 day' GROUP BY 1"
if [ -n "${LOGS_BENCH_SQL_FILE:-}" ]; then
  while IFS= read -r q; do [ -n "$q" ] && time_sql "$q" "${q%;}"; done < "$LOGS_BENCH_SQL_FILE"
fi
for u in $URLS; do time_url "$u"; done

if [ -n "${LOGS_BENCH_KEEP:-}" ]; then
  say "kept: DATABASE_URL=$DATABASE_URL, keygate at $BASE (admin token in \$TOKEN below); Ctrl-C stops"
  echo "TOKEN=$TOKEN"
  wait "$KG"
fi
