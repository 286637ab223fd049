#!/usr/bin/env bash
# Checks the admin API's OpenAPI document against the real binary: redocly lint (0 errors), a
# client generated from it (openapi-typescript + openapi-fetch) doing one round trip, and
# schemathesis with every check (0 failures, 0 server errors). Builds nothing: it runs the binary
# cargo test built, `$KEYGATE_BIN` or `${CARGO_TARGET_DIR:-target}/debug/keygate`, on a free
# loopback port with a temporary data directory (SQLite, in-process coordination).
#
# Tools are pinned (tests/spec/package-lock.json, SCHEMATHESIS below) and go into .cache/spec.
# The last line is a cargo-style "test result:" line for scripts/test.sh's total.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS='schemathesis==4.32.5'
# Cases per operation and phase, and a fixed seed so a run is repeatable: about 1 min on 2 cores.
MAX_EXAMPLES="${KEYGATE_SPEC_EXAMPLES:-20}"
SEED="${KEYGATE_SPEC_SEED:-1}"

bin="${KEYGATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/keygate}"
if [ ! -x "$bin" ]; then
  echo "check-spec: no binary at $bin: run cargo test (or cargo build) first, or set KEYGATE_BIN" >&2
  exit 1
fi
cache="${KEYGATE_SPEC_CACHE:-$PWD/.cache/spec}"
mkdir -p "$cache"

for tool in node npm python3 curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "check-spec: installing nodejs npm python3 python3-pip curl (apt)" >&2
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm python3 python3-pip curl >/dev/null
      break
    fi
    echo "check-spec: $tool is needed" >&2
    exit 1
  fi
done

# npm: the linter, the generator, its runtime and tsc, exactly as locked.
if [ ! -d "$cache/node_modules" ] || ! cmp -s tests/spec/package-lock.json "$cache/package-lock.json"; then
  cp tests/spec/package.json tests/spec/package-lock.json "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
# PyPI: schemathesis into its own directory (no venv needed; Debian's pip wants the flag).
py="$cache/py"
if [ ! -f "$py/.installed" ] || [ "$(cat "$py/.installed")" != "$SCHEMATHESIS" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  rm -rf "$py"
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --target "$py" "$SCHEMATHESIS" >&2
  echo "$SCHEMATHESIS" >"$py/.installed"
fi

passed=0
failed=0
result() { # name status
  if [ "$2" = 0 ]; then
    echo "test spec::$1 ... ok"
    passed=$((passed + 1))
  else
    echo "test spec::$1 ... FAILED"
    failed=$((failed + 1))
  fi
}

# The binary on a free port, in a temp dir that goes away with it.
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password="spec-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
base="http://127.0.0.1:$port"
ADMIN_USERNAME=admin ADMIN_PASSWORD="$password" KEYGATE__DATABASE__DATA_DIR="$work/data" \
  KEYGATE__SERVER__LISTEN="127.0.0.1:$port" NO_COLOR=1 RUST_BACKTRACE=0 "$bin" >"$work/keygate.log" 2>&1 &
pid=$!
deadline=$((SECONDS + 60))
until curl -sf "$base/healthz" >/dev/null 2>&1; do
  if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    echo "check-spec: keygate did not come up on $base:" >&2
    tail -20 "$work/keygate.log" >&2
    exit 1
  fi
  sleep 0.1
done

# 1. The committed document is the one the binary serves (the drift test checks the source).
curl -sf "$base/openapi.json" -o "$work/served.json"
python3 - "$work/served.json" openapi/openapi.json <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
sys.exit(0 if a == b else "check-spec: the served document differs from openapi/openapi.json")
PY
result served_document_is_the_committed_one $?

# 2. Lint: 0 errors (warnings are printed, not fatal).
set +e
"$cache/node_modules/.bin/redocly" lint openapi/openapi.json --format=summary 2>&1 | grep -v -i "node.js\|deprecat\|^ *║\|╔\|╚" 
lint=${PIPESTATUS[0]}
set -e
result redocly_lint_has_no_errors "$lint"

# 3. A generated client: types from the document, type-checked against the calls, then run.
client="$cache/client"
rm -rf "$client" && mkdir -p "$client"
cp tests/spec/roundtrip.ts tests/spec/tsconfig.json "$client/"
ln -s "$cache/node_modules" "$client/node_modules"
set +e
(
  set -e
  "$cache/node_modules/.bin/openapi-typescript" openapi/openapi.json -o "$client/schema.d.ts" --silent
  "$cache/node_modules/.bin/tsc" -p "$client/tsconfig.json"
  KEYGATE_URL="$base" KEYGATE_ADMIN_PASSWORD="$password" node "$client/roundtrip.js"
)
rt=$?
set -e
result generated_client_round_trip "$rt"

# 4. Schemathesis, every check (tests/spec/schemathesis.toml enables them all, the equivalent of
# --checks all, and lists the few per-operation exceptions with their reasons), as the admin the
# binary created. It runs last: its stateful phase changes what the earlier steps rely on.
token=$(curl -sf "$base/admin/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$password\"}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
set +e
PYTHONPATH="$py" timeout 300 "$py/bin/schemathesis" --config-file tests/spec/schemathesis.toml run "$base/openapi.json" \
  --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 2 \
  --generation-database none --no-color --output-truncate true \
  -H "Authorization: Bearer $token" 2>&1 | tee "$work/schemathesis.txt" | tail -40
st=${PIPESTATUS[0]}
set -e
if [ "$st" != 0 ]; then
  cp "$work/schemathesis.txt" "$work/keygate.log" "$cache/"
  echo "check-spec: schemathesis failed (exit $st); its whole report and the keygate log are in $cache" >&2
  grep -a -A3 ' ERROR ' "$work/keygate.log" | grep -av '^ *[0-9]*: \|^ *at ' | tail -20 >&2 || true
fi
result schemathesis_all_checks_pass "$st"

if [ "$failed" = 0 ]; then
  echo "test result: ok. $passed passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
else
  echo "test result: FAILED. $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out"
  exit 1
fi
