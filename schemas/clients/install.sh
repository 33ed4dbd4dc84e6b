#!/usr/bin/env bash
# Installs the pinned client generators: the npm packages of package-lock.json into
# node_modules (npm ci) and requirements.txt into the venv build/venv. Each is installed again
# only when its pins changed since the last install. Used by check.sh and by CI.
set -euo pipefail
cd "$(dirname "$0")"

if ! cmp -s package-lock.json node_modules/.installed-lock.json 2>/dev/null; then
    npm ci --no-audit --no-fund
    cp package-lock.json node_modules/.installed-lock.json
fi

if ! cmp -s requirements.txt build/venv/.installed-requirements.txt 2>/dev/null; then
    rm -rf build/venv
    mkdir -p build
    python3 -m venv build/venv
    build/venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt build/venv/.installed-requirements.txt
fi
