#!/usr/bin/env bash
# Creates (once) the Python venv the test oracles use and prints the path of its python.
# The venv lives outside the repo, keyed by the hash of python-requirements.txt, so a change re-creates it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}
key=$(sha256sum "$here/python-requirements.txt" | cut -c1-12)
venv="$cache/venv-$key"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/python-requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
