#!/usr/bin/env bash
# keygate's own instructions per request for request logging: one gateway with logging on and
# one with it off (`log.requests = false`), each under callgrind, on Postgres + Redis with 100
# keys, serve the same requests; callgrind's instruction count is the same run after run,
# unlike CPU time on a shared VM, so the difference is the log writer's work in keygate (the
# database's own cost is outside it: see scripts/bench.sh for Postgres's CPU per request).
# Counts from a warm gateway only: the counters are zeroed after a warm-up.
#
#   scripts/log_cost.sh                      # LOG_COST_REQUESTS=20000, release binaries built
#   BENCH_BIN=/path/to/release scripts/log_cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
N="${LOG_COST_REQUESTS:-20000}"
# A batch every 5 s: at the few hundred requests a second keygate serves under callgrind, about as
# many events a batch as the bench's gateways write at full speed with the default 1 s.
FLUSH_MS="${LOG_COST_FLUSH_MS:-5000}"
need valgrind || { echo "log_cost: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
need oha || cargo install oha --locked >&2
if [ -z "$PGBIN" ] || ! need redis-server; then
  echo "log_cost: needs the postgresql and redis-server packages" >&2; exit 1
fi
if [ -n "${BENCH_BIN:-}" ]; then BIN="$BENCH_BIN"; else
  cargo build --release --locked --bins >&2
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
fi
WORK=$(mktemp -d /tmp/keygate-logcost.XXXXXX); chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  stop_pg "$WORK/pg"; rm -rf "$WORK"
}
trap cleanup EXIT

MOCK_PORT=$(free_port)
"$BIN/keygate-mock-upstream" "$MOCK_PORT" >/dev/null & PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/healthz"
PG_PORT=$(free_port); REDIS_PORT=$(free_port)
start_pg "$WORK/pg" "$PG_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & PIDS+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break; sleep 0.05; done
BODY='{"model":"bench","messages":[{"role":"user","content":"hello"}]}'
rows() { "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d log_on -tAc "select count(*) from request_logs"; }

declare -A IR
for mode in on off; do
  requests=true; [ "$mode" = off ] && requests=false
  "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "log_$mode"
  port=$(free_port); base="http://127.0.0.1:$port"
  out="$WORK/callgrind.$mode"
  # exec: $! is valgrind, which runs keygate in its own process.
  (cd "$WORK" && exec env KEYGATE__LOG__FLUSH_INTERVAL_MS="$FLUSH_MS" KEYGATE__LOG__REQUESTS=$requests \
    DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/log_$mode" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    KEYGATE__REDIS__PREFIX="$mode:" JWT_SECRET=log-cost-jwt-secret-0123456789 \
    KEYGATE_ENCRYPTION_KEY="$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')" \
    PORT="$port" ADMIN_PASSWORD=bench-password RUST_LOG=warn KEYGATE__EGRESS__ALLOW=127.0.0.0/8,::1/128 \
    valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN/keygate" >/dev/null 2>"$WORK/$mode.log") &
  pid=$!; PIDS+=($pid)
  # Under valgrind the start (migrations, the admin password's hash) takes a minute or more.
  for _ in $(seq 1 600); do curl -fs "$base/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
  token=$(python3 -c 'import json,sys,urllib.request; r=urllib.request.urlopen(urllib.request.Request(sys.argv[1]+"/admin/auth/login", data=json.dumps({"username":"admin","password":"bench-password"}).encode(), headers={"content-type":"application/json"})); print(json.load(r)["access_token"])' "$base")
  admin POST "$base/admin/services" "$token" "{\"slug\":\"bench\",\"kind\":\"openai\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT/v1\"}" >/dev/null
  keys=$(python3 -c 'import json; print(json.dumps({"keys":[{"key":"sk-bench-%04d-%s" % (i, "x"*24)} for i in range(100)]}))')
  admin POST "$base/admin/services/bench/keys" "$token" "$keys" >/dev/null
  ak=$(admin POST "$base/admin/access-keys" "$token" '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  load() { oha -n "$1" -c 16 --no-tui -m POST -H 'content-type: application/json' \
    -H "authorization: Bearer $ak" -d "$BODY" "$base/llm/bench/v1/chat/completions" >/dev/null; }
  echo "log_cost: logging $mode, warm-up" >&2
  load 2000
  # The warm-up's last batch is written (or dropped) before the count starts: a flush interval
  # and a margin, the same wait for both gateways.
  sleep $((FLUSH_MS / 1000 + 2))
  before=$(rows)
  callgrind_control -z "$pid" >/dev/null
  echo "log_cost: logging $mode, $N requests" >&2
  load "$N"
  sleep $((FLUSH_MS / 1000 + 3))
  if [ "$mode" = on ]; then
    written=$(( $(rows) - before ))
    [ "$written" = "$N" ] || { echo "log_cost: $written rows written for $N requests" >&2; exit 1; }
  fi
  callgrind_control -d "$pid" >/dev/null
  IR[$mode]=$(awk '/^summary:/ {print $2; exit}' "$(ls -t "$out".* | head -1)")
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
python3 - "${IR[on]}" "${IR[off]}" "$N" <<'PY'
import sys
on, off, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(f"keygate instructions per request: logging on {on / n:,.0f}, off {off / n:,.0f}, "
      f"difference {(on - off) / n:,.0f} ({on / off - 1:+.2%})")
PY
