# Sourced by scripts/run and scripts/test: one cargo target directory per checkout, so
# the two commands share every compiled dependency (the first build on a fresh
# 2-core machine takes ~20 minutes; the other command then reuses it).
#
# CARGO_TARGET_DIR defaults to ~/.cache/maestro/target-<hash of this checkout's path>,
# outside the clone, so repeated runs reuse compiled dependencies. It is keyed by path
# because cargo identifies workspace crates by their path *within* the workspace: two
# checkouts sharing one target dir can reuse each other's builds of our own crates and
# test stale code.
if [[ -z "${CARGO_TARGET_DIR:-}" ]]; then
    _maestro_checkout_key=$(pwd -P | sha256sum | cut -c1-12)
    export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/maestro/target-$_maestro_checkout_key"
    unset _maestro_checkout_key
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
