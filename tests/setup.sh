#!/usr/bin/env bash
# Install what the tests need: the locked Python packages, and from Debian's packages Chromium
# for the browser test of the MLflow UI (Playwright drives it; it cannot download a browser
# here) and PostgreSQL for the team-server tests (tools/postgres.py starts it).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
# What tests need of the machine itself, said here rather than deep inside a test.
command -v git >/dev/null 2>&1 || { echo "tests/setup.sh: the tests need git" >&2; exit 1; }
if ! unshare --map-root-user true 2>/dev/null; then
  echo "tests/setup.sh: the fault tests need unprivileged user namespaces (unshare --map-root-user)" >&2
  exit 1
fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
