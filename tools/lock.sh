#!/usr/bin/env bash
# Regenerate the lock files from the human-edited .in files (needs uv: pip install uv).
# Each lock pins every package exactly, with hashes, resolved once for Python 3.11 on Linux,
# macOS and Windows; each builds on the one before, so shared packages get the same versions.
set -euo pipefail
cd "$(dirname "$0")/.."
for name in requirements requirements-dask requirements-server requirements-test; do
  uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
    --custom-compile-command "bash tools/lock.sh" "$name.in" -o "$name.txt"
done
