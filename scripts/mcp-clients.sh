#!/usr/bin/env bash
# Installs the pinned third-party MCP clients the integration tests run against Maestro
# (host/tests/mcp: package.json + package-lock.json for npm, requirements.txt for
# Python) into a cache directory outside the checkout, and prints that directory on
# stdout. Everything else goes to stderr.
#
#   ${MAESTRO_CACHE:-/var/tmp/maestro-cache}/mcp-clients-<hash of the manifests>/
#     node_modules/          `npm ci` of the lock, including Node 22 at .bin/node
#     venv/                  a Python venv with `pip install -r requirements.txt`
#     .complete              written last: the directory is whole
#
# Idempotent and fast once installed (the marker is checked first). Atomic: the install
# happens in a temporary sibling directory renamed into place when complete, so an
# interrupted run leaves nothing half-installed under the final name. Concurrent runs
# wait on a lock instead of installing twice.
#
# Needs node + npm (any version that runs `npm ci`; Node 20 will do) and Python >= 3.10
# with the venv module. PYTHON selects the interpreter (default python3).
set -euo pipefail

manifests="$(cd "$(dirname "$0")/.." && pwd -P)/host/tests/mcp"
cache="${MAESTRO_CACHE:-/var/tmp/maestro-cache}"
python="${PYTHON:-python3}"
# The layout version is part of the key, so a change to this script's output layout
# never reuses an old directory.
layout=1
key=$({
    echo "layout $layout"
    cat "$manifests/package-lock.json" "$manifests/requirements.txt"
} | sha256sum | cut -c1-16)
dir="$cache/mcp-clients-$key"

if [[ -f "$dir/.complete" ]]; then
    echo "$dir"
    exit 0
fi

for tool in npm "$python" flock; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: mcp-clients: \`$tool\` is required to install the MCP test clients" >&2
        exit 1
    fi
done

mkdir -p "$cache"
exec 9>"$cache/.mcp-clients-$key.lock"
flock 9
# Another run may have finished the install while this one waited.
if [[ -f "$dir/.complete" ]]; then
    echo "$dir"
    exit 0
fi
# Leftovers of interrupted runs (holding the lock, no other run is using them).
rm -rf "$dir" "$cache/.mcp-clients-$key.tmp."*

tmp=$(mktemp -d "$cache/.mcp-clients-$key.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cp "$manifests/package.json" "$manifests/package-lock.json" "$manifests/requirements.txt" "$tmp/"

echo "mcp-clients: npm ci into $dir" >&2
(cd "$tmp" && npm ci --no-audit --no-fund --loglevel=error) >&2

echo "mcp-clients: python venv + pip install -r requirements.txt" >&2
"$python" -m venv "$tmp/venv" >&2 || {
    echo "error: mcp-clients: \`$python -m venv\` failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
}
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$tmp/requirements.txt" >&2

# Smoke-check what the tests rely on before declaring the directory complete.
"$tmp/node_modules/.bin/node" -e '
    const major = Number(process.versions.node.split(".")[0]);
    if (major < 22) { console.error(`node ${process.version} in node_modules is too old`); process.exit(1); }
    require.resolve("@modelcontextprotocol/sdk/client/index.js", { paths: [process.argv[1]] });
' "$tmp" >&2
"$tmp/venv/bin/python" -c 'import mcp, mcp.client.session' >&2

touch "$tmp/.complete"
mv -T "$tmp" "$dir"
trap - EXIT
echo "mcp-clients: installed" >&2
echo "$dir"
