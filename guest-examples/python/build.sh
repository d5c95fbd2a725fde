#!/usr/bin/env bash
# Builds app.py into dist/handler.wasm, a component of the `full-handler`
# world of ../../wit/handler.wit, with componentize-py from PyPI (installed
# once into .venv/, which git ignores). Also writes the bindings it generates
# into bindings/ (git ignores them too: they are regenerated on every build),
# so editors know the API.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
wit=../../wit/handler.wit
rm -rf bindings && .venv/bin/componentize-py -d "$wit" -w full-handler bindings bindings
mkdir -p dist
.venv/bin/componentize-py -d "$wit" -w full-handler componentize app -o dist/handler.wasm
ls -l dist/handler.wasm
