#!/usr/bin/env bash
# Fetch the retrieval-quality set into the cache and print its directory: the one line
# on stdout.
#
# The set is Lee, Pincombe & Welsh (2005), "An empirical evaluation of models of text
# document similarity": 50 short Australian news articles (`lee.cor`, one a line,
# Latin-1) and the mean human similarity rating of every pair, scaled to 0–1
# (`similarities0-1.txt`: a 50×50 upper-triangular matrix, 1 on the diagonal, 0 below
# it). Gensim ships both in its test data; we take them from the PyPI wheel
# `gensim==4.4.0` (one pinned CPython 3.11 manylinux wheel, `pip download --no-deps`:
# nothing is installed, and the machine's own Python version does not matter). The
# wheel and the two files are checked against pinned sha256 sums; nothing is committed.
#
# Usage:
#   MAESTRO_EVAL_SET_DIR=$(scripts/eval-set.sh)   # idempotent; instant when present
#   cargo test -p maestro-host --test it retrieval_quality -- --nocapture
#
# Environment:
#   MAESTRO_CACHE_DIR   cache root (default /var/tmp/maestro-cache, like scripts/model.sh)
#   PYTHON              python used to run pip (default python3)
#
# Progress goes to stderr; only the directory goes to stdout.
set -euo pipefail

readonly PACKAGE="gensim"
readonly VERSION="4.4.0"
readonly WHEEL_FILE="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
readonly WHEEL_SHA256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8"
readonly DOCS_SHA256="a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e"
readonly SIMS_SHA256="23762bc6b728897144dda3d324a2c032dc1e059e1009806226d64b6dd123ed79"
readonly INNER="gensim/test/test_data"

CACHE_DIR="${MAESTRO_CACHE_DIR:-/var/tmp/maestro-cache}"
PYTHON="${PYTHON:-python3}"
SET_DIR="$CACHE_DIR/eval/lee-2005-gensim-$VERSION"
MARKER="$SET_DIR/.maestro-eval-set-complete"

log() { echo "eval-set.sh: $*" >&2; }
die() { echo "eval-set.sh: ERROR: $*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

check() {
    local file="$1" want="$2" got
    [[ -f "$file" ]] || die "missing $file"
    got="$(sha256_of "$file")"
    [[ "$got" == "$want" ]] || die "$(basename "$file") has sha256 $got, expected $want"
}

# Fast path: the marker is written only after the hashes matched once.
if [[ -f "$MARKER" && -f "$SET_DIR/lee.cor" && -f "$SET_DIR/similarities0-1.txt" ]]; then
    echo "$SET_DIR"
    exit 0
fi

mkdir -p "$CACHE_DIR/eval" || die "cannot create cache dir $CACHE_DIR/eval"
# Several test jobs may ask at once: one downloads, the others wait for it.
exec 9>"$CACHE_DIR/eval/.fetch.lock"
flock 9 || die "cannot lock $CACHE_DIR/eval/.fetch.lock"
if [[ -f "$MARKER" ]]; then
    echo "$SET_DIR"
    exit 0
fi

work="$(mktemp -d "$CACHE_DIR/eval/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "downloading $PACKAGE==$VERSION from PyPI (one-time, ~28 MB; two small files are kept)"
if ! PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip download --disable-pip-version-check \
    --no-input --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --abi cp311 --platform manylinux_2_28_x86_64 --dest "$work/wheel" \
    "$PACKAGE==$VERSION" >&2; then
    die "pip download $PACKAGE==$VERSION failed (is PyPI reachable? is $PYTHON -m pip available?)"
fi
wheel="$work/wheel/$WHEEL_FILE"
[[ -f "$wheel" ]] || die "pip download did not leave $WHEEL_FILE in $work/wheel"
check "$wheel" "$WHEEL_SHA256"

# A wheel is a zip; python's zipfile avoids depending on unzip. Only the two files.
stage="$work/set"
mkdir -p "$stage"
"$PYTHON" - "$wheel" "$stage" "$INNER" <<'PY' || die "cannot extract the set from $wheel"
import os
import sys
import zipfile

wheel, stage, inner = sys.argv[1:4]
with zipfile.ZipFile(wheel) as archive:
    for name in ("lee.cor", "similarities0-1.txt"):
        with open(os.path.join(stage, name), "wb") as out:
            out.write(archive.read(f"{inner}/{name}"))
PY
check "$stage/lee.cor" "$DOCS_SHA256"
check "$stage/similarities0-1.txt" "$SIMS_SHA256"

rm -rf "$SET_DIR"
mv "$stage" "$SET_DIR"
chmod -R a+rX "$SET_DIR"
touch "$MARKER"
log "set ready in $SET_DIR"
echo "$SET_DIR"
