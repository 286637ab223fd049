#!/usr/bin/env bash
# Benchmark: what keygate adds on top of a direct call to the upstream.
#
# Starts the fast mock upstream (src/bin/keygate-mock-upstream.rs), then runs the load generator
# `oha` (installed with cargo if missing) for BENCH_SECS seconds at concurrency 1, 32 and 256
# against: the mock directly; keygate on SQLite + memory; keygate on Postgres + Redis (both with
# 100 keys in the slug). Prints RPS, p50/p99/p99.9, keygate's added latency (difference of
# percentiles against the direct run at the same concurrency), errors and keygate's peak RSS.
# Everything listens on 127.0.0.1 and stops when the script ends.
#
#   scripts/bench.sh                 # BENCH_SECS=10 BENCH_CONCURRENCY="1 32 256" by default
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${BENCH_SECS:-10}"
CONCURRENCY="${BENCH_CONCURRENCY:-1 32 256}"
WORK=$(mktemp -d /tmp/keygate-bench.XXXXXX)
chmod 755 "$WORK"   # the postgres user must reach its data dir inside
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  if [ -f "$WORK/pg/data/postmaster.pid" ]; then
    run_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need oha; then
  echo "bench: installing oha with cargo (a few minutes, once)" >&2
  cargo install oha --locked >&2
fi
export PATH="$HOME/.cargo/bin:$PATH"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -n "${KEYGATE_PG_BIN:-}" ] && PGBIN="$KEYGATE_PG_BIN"
if [ -z "$PGBIN" ] || ! need redis-server; then
  echo "bench: needs the postgresql and redis-server packages (scripts/test.sh installs them as root)" >&2
  exit 1
fi

echo "bench: building release binaries" >&2
cargo build --release --locked --bins >&2
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 300); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "bench: $1 did not come up" >&2; exit 1; }
run_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; else "$@"; fi; }

MOCK_PORT=$(free_port)
"$BIN/keygate-mock-upstream" "$MOCK_PORT" >/dev/null & PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/healthz"

# Postgres and Redis on free loopback ports, thrown away at the end.
PG_PORT=$(free_port); REDIS_PORT=$(free_port)
mkdir -p "$WORK/pg"; [ "$(id -u)" = 0 ] && chown -R postgres "$WORK/pg"
run_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
run_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK/pg -c max_connections=200" start >/dev/null
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null & PIDS+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break; sleep 0.05; done

BODY='{"model":"bench","messages":[{"role":"user","content":"hello"}]}'
RESULTS="$WORK/results.jsonl"; : > "$RESULTS"

load() { # name url concurrency [extra oha args...]
  local name=$1 url=$2 c=$3; shift 3
  oha -z "${SECS}s" -c "$c" --no-tui --output-format json -m POST \
    -H 'content-type: application/json' -d "$BODY" "$@" "$url" > "$WORK/oha.json"
  python3 - "$name" "$c" "$WORK/oha.json" >> "$RESULTS" <<'PY'
import json, sys
name, c, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = json.load(open(path))
p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
# Requests still in flight when the run's time is up are cut off by oha itself: not errors.
errors = sum(v for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k)
errors += sum(v for k, v in codes.items() if k != "200")
print(json.dumps({"target": name, "c": c, "rps": r["summary"]["requestsPerSec"],
  "p50": p["p50"] * 1e3, "p99": p["p99"] * 1e3, "p999": p["p99.9"] * 1e3, "errors": errors,
  "ok": codes.get("200", 0)}))
PY
}

admin() { # method path token [json]
  python3 - "$@" <<'PY'
import json, sys, urllib.request
method, url, token = sys.argv[1], sys.argv[2], sys.argv[3]
data = sys.argv[4].encode() if len(sys.argv) > 4 else None
req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json", "authorization": "Bearer " + token})
print(urllib.request.urlopen(req).read().decode())
PY
}

gateway() { # name, then env assignments
  local name=$1; shift
  local port; port=$(free_port)
  mkdir -p "$WORK/$name"
  # exec: $! is keygate itself, whose peak RSS is read at the end.
  (cd "$WORK/$name" && exec env "$@" PORT="$port" ADMIN_PASSWORD=bench-password RUST_LOG=warn \
    "$BIN/keygate" >/dev/null 2>"$WORK/$name/log") & local pid=$!
  PIDS+=($pid)
  wait_http "http://127.0.0.1:$port/healthz"
  local base="http://127.0.0.1:$port"
  local token
  token=$(python3 -c 'import json,sys,urllib.request; r=urllib.request.urlopen(urllib.request.Request(sys.argv[1]+"/admin/auth/login", data=json.dumps({"username":"admin","password":"bench-password"}).encode(), headers={"content-type":"application/json"})); print(json.load(r)["access_token"])' "$base")
  admin POST "$base/admin/services" "$token" "{\"slug\":\"bench\",\"kind\":\"openai\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT/v1\"}" >/dev/null
  local keys; keys=$(python3 -c 'import json; print(json.dumps({"keys":[{"key":"sk-bench-%04d-%s" % (i, "x"*24)} for i in range(100)]}))')
  admin POST "$base/admin/services/bench/keys" "$token" "$keys" >/dev/null
  local ak; ak=$(admin POST "$base/admin/access-keys" "$token" '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  for c in $CONCURRENCY; do
    echo "bench: $name, concurrency $c, ${SECS}s" >&2
    load "$name" "$base/llm/bench/v1/chat/completions" "$c" -H "authorization: Bearer $ak"
  done
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  echo "{\"target\": \"$name\", \"peak_rss_kb\": $rss}" >> "$RESULTS"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  PIDS=("${PIDS[@]/$pid}")   # gone: never signal a pid the system may hand out again
}

for c in $CONCURRENCY; do
  echo "bench: direct, concurrency $c, ${SECS}s" >&2
  load direct "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "$c"
done
gateway sqlite+memory
gateway postgres+redis DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres" \
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT" JWT_SECRET=bench-jwt-secret-0123456789 \
  KEYGATE_ENCRYPTION_KEY="$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"

python3 - "$RESULTS" "$SECS" <<'PY'
import json, sys, os, platform
rows = [json.loads(l) for l in open(sys.argv[1])]
direct = {r["c"]: r for r in rows if r["target"] == "direct" and "c" in r}
rss = {r["target"]: r["peak_rss_kb"] for r in rows if "peak_rss_kb" in r}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"keygate benchmark: {os.cpu_count()} cores ({cpu}), {sys.argv[2]} s per run, 100 keys in the slug, mock upstream on loopback")
print()
print("| target | conc. | RPS | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | errors | peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if "c" not in r:
        continue
    d = direct.get(r["c"])
    add = lambda k: "" if r["target"] == "direct" or d is None else f"{r[k] - d[k]:+.3f}"
    mem = "" if r["target"] == "direct" else f"{rss.get(r['target'], 0) / 1024:.0f} MiB"
    print(f"| {r['target']} | {r['c']} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['p999']:.3f} "
          f"| {add('p50')} | {add('p99')} | {add('p999')} | {r['errors']} | {mem} |")
PY
