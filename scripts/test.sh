#!/usr/bin/env bash
# Runs the whole keygate test suite. The integration tests start their own Postgres and Redis from
# the server binaries on free loopback ports, so those binaries must be installed: as root on Debian
# this script installs them; otherwise it says what is missing and stops. Then the console's browser
# tests (scripts/e2e.sh: node, Debian's chromium, npm packages into .cache/e2e) and the OpenAPI checks
# (scripts/check-spec.sh: redocly, a generated client, schemathesis; into .cache/spec).
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
  [ -n "${KEYGATE_PG_BIN:-}" ] && [ -x "$KEYGATE_PG_BIN/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
have_redis() { command -v redis-server >/dev/null 2>&1; }

missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing ${missing[*]} from Debian packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: missing ${missing[*]}: install the server binaries (Debian: apt-get install ${missing[*]}) or set KEYGATE_PG_BIN" >&2
    exit 1
  fi
fi

export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"
# Unit and integration tests of every crate (there are no doctests). The last line totals the
# per-binary "test result" lines, so the closing line speaks for the whole suite.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The web console in a real browser, against the binaries cargo test just built; only for the
# whole suite (no test filter given) and not when KEYGATE_SKIP_E2E is set.
if [ "$status" = 0 ] && [ $# -eq 0 ] && [ -z "${KEYGATE_SKIP_E2E:-}" ]; then
  scripts/e2e.sh 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
# The admin API's OpenAPI document against the binary cargo test just built: redocly lint, a
# generated client's round trip, schemathesis with every check; only for the whole suite.
if [ "$status" = 0 ] && [ $# -eq 0 ] && [ -z "${KEYGATE_SKIP_SPEC:-}" ]; then
  scripts/check-spec.sh 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
# The deploy files (Dockerfile build context, compose, Helm chart, Prometheus rules): no Docker or
# cluster needed; its own "test result:" line joins the total below.
deploy_status=0
if [ "${KEYGATE_DEPLOY_CHECKS:-1}" != 0 ]; then
  scripts/check-deploy.sh 2>&1 | tee -a "$log"
  deploy_status=${PIPESTATUS[0]}
fi
[ "$status" -ne 0 ] || status=$deploy_status
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
