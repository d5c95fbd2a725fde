#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests that start the real
# authkit-host binary on loopback against SQLite and against Postgres.
#
# Postgres: every test creates its own database on the server named by
# AUTHKIT_TEST_POSTGRES_URL (default: the local server on 127.0.0.1:5432, user
# postgres) and drops it afterwards. Run plain `cargo test` without that
# variable and the Postgres half is skipped, with a loud note per test.
set -euo pipefail
cd "$(dirname "$0")/.."

export AUTHKIT_TEST_POSTGRES_URL="${AUTHKIT_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

if command -v pg_isready >/dev/null 2>&1; then
    host_port="${AUTHKIT_TEST_POSTGRES_URL#*@}"; host_port="${host_port%%/*}"
    if ! pg_isready -q -h "${host_port%%:*}" -p "${host_port##*:}"; then
        echo "error: no Postgres server answers at ${host_port} (AUTHKIT_TEST_POSTGRES_URL); start it or point the variable elsewhere" >&2
        exit 1
    fi
fi

# The integration tests run the binary itself, so build it first.
cargo build --locked -p authkit-host --bin authkit-host

# ... and real handler components, built from guest-examples/ sources.
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --locked --release --target wasm32-wasip2 --manifest-path guest-examples/rust/Cargo.toml
# The JavaScript guest: componentize-js from npm, installed once into guest-examples/js/node_modules.
(cd guest-examples/js && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run build)
# The Python guest: componentize-py from PyPI, installed once into guest-examples/python/.venv.
bash guest-examples/python/build.sh

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace 2>&1 | tee "$log" || status=$?
# One closing line over every test binary, in the plain "N passed, N failed" form.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\nall test binaries: %d passed, %d failed, %d ignored\n", p, f, i }' "$log"
exit "$status"
