#!/usr/bin/env bash
# Browser tests of the web console (tests/e2e/console.mjs) and the type check of its sources
# (src/console/assets, JSDoc checked by tsc). Needs node and npm; installs Debian's chromium when
# run as root and it is missing, and the pinned npm packages (tests/e2e/package-lock.json) into
# .cache/e2e. `--screenshots` writes the screenshots into docs/screenshots (the committed ones).
set -euo pipefail
cd "$(dirname "$0")/.."

shots=.cache/e2e/screenshots
[ "${1:-}" = "--screenshots" ] && shots=docs/screenshots

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/e2e.sh: installing chromium from Debian packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "scripts/e2e.sh: missing $chromium: install it (Debian: apt-get install chromium) or set CHROMIUM" >&2
    exit 1
  fi
fi
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/e2e.sh: installing nodejs and npm from Debian packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "scripts/e2e.sh: node and npm are needed for the console tests" >&2
    exit 1
  fi
fi

# Committed screenshots include the Chinese screens: without a CJK font they would show boxes.
if [ "$shots" = docs/screenshots ] && ! fc-list :lang=zh 2>/dev/null | grep -q . \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null
fi

cache=.cache/e2e
if [ ! -d "$cache/node_modules" ] || ! cmp -s tests/e2e/package-lock.json "$cache/package-lock.json"; then
  mkdir -p "$cache"
  cp tests/e2e/package.json tests/e2e/package-lock.json "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The type check counts as one test in the suite's totals.
if "$cache/node_modules/.bin/tsc" -p src/console/tsconfig.json; then
  echo "test console::sources_type_check ... ok"
  echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
else
  echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"
  exit 1
fi

# The binaries the tests start; after `cargo test` this finds them built and does nothing.
cargo build --quiet --locked --bins
bin_dir="${CARGO_TARGET_DIR:-target}/debug"
# Node resolves playwright-core from the script's own directory, so the script runs from the cache.
cp tests/e2e/console.mjs "$cache/console.mjs"
KEYGATE_BIN_DIR="$bin_dir" CHROMIUM="$chromium" SCREENSHOTS="$shots" node "$cache/console.mjs"
