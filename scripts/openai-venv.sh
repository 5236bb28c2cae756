#!/usr/bin/env bash
# Sets up the Python client the server's compatibility test drives: the official `openai`
# package from PyPI, pinned, in a virtual environment under the test-data cache, and prints the
# environment's python on stdout (everything else goes to stderr, so callers can capture it).
#
# Where: `$BITNET_TEST_DATA/openai-venv` (default cache: `<workspace>/.cache/test-data`).
# Idempotent, and offline once set up: an environment with the pinned version is reused as it is.
# Needs Python 3 with venv and pip (Debian: python3-venv, python3-pip; override the interpreter
# with $PYTHON).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${BITNET_TEST_DATA:-$root/.cache/test-data}"
python="${PYTHON:-python3}"

package=openai
# Pinned so the check is reproducible; raise it deliberately.
version=3.57.0

venv="$cache/openai-venv"
py="$venv/bin/python"

installed() {
    [[ -x "$py" ]] && "$py" - "$version" <<'PY' >/dev/null 2>&1
import sys, openai
sys.exit(0 if openai.__version__ == sys.argv[1] else 1)
PY
}

if installed; then
    echo "$py"
    exit 0
fi

mkdir -p "$cache"
if [[ ! -x "$py" ]]; then
    echo "creating a virtual environment in $venv" >&2
    if ! "$python" -m venv "$venv" >&2; then
        rm -rf "$venv"
        echo "could not create a virtual environment with $python -m venv (on Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi
echo "installing $package==$version from PyPI into $venv" >&2
# pip reports progress on stdout: keep stdout for the path alone.
"$py" -m pip install --quiet --disable-pip-version-check "$package==$version" >&2
if ! installed; then
    echo "$package==$version did not import from $venv" >&2
    exit 1
fi
echo "$py"
