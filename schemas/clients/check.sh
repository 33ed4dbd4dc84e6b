#!/usr/bin/env bash
# Generates the TypeScript and Python clients from ../openapi.json, type-checks the TypeScript
# sample, and runs both against a live dbguard server. Exits non-zero on any mismatch.
#
#   schemas/clients/check.sh BASE_URL READ_TOKEN ADMIN_TOKEN
#
# READ_TOKEN holds db:read only, ADMIN_TOKEN db:read and db:admin. The server should use a
# least-privilege DB_TEST_URL login (writes answer 403) and may run without plugins (reload
# answers 409). Needs node and npm, and python3 with venv; the pinned packages come from
# package-lock.json and requirements.txt. Generated files go to schema.d.ts and build/, which
# are not committed.
set -euo pipefail
cd "$(dirname "$0")"

if (($# != 3)); then
    echo "usage: $0 BASE_URL READ_TOKEN ADMIN_TOKEN" >&2
    exit 2
fi
base_url=$1 read_token=$2 admin_token=$3

step() { printf '\n==> %s\n' "$*"; }

step "pinned generators (package-lock.json, requirements.txt)"
./install.sh

step "TypeScript: generate schema.d.ts, type-check and build the sample"
npx --no-install openapi-typescript ../openapi.json --output schema.d.ts
npx --no-install tsc --noEmit --strict -p tsconfig.json
npx --no-install tsc -p tsconfig.json

step "Python: generate pydantic v2 models"
mkdir -p build/python
# --strict-nullable: a property with a default (the test request's params) is not nullable;
# requestbodies: the test request is a request body component, not a schema.
build/venv/bin/datamodel-codegen \
    --input ../openapi.json --input-file-type openapi \
    --output-model-type pydantic_v2.BaseModel \
    --openapi-scopes schemas requestbodies \
    --strict-nullable \
    --formatters builtin \
    --disable-timestamp \
    --output build/python/dbguard_models.py
build/venv/bin/python -c "import sys; sys.path.insert(0, 'build/python'); import dbguard_models"

status=0
step "TypeScript sample against $base_url"
node build/ts/sample.js "$base_url" "$read_token" "$admin_token" || status=1

step "Python models against $base_url"
PYTHONPATH=build/python build/venv/bin/python check_responses.py ../openapi.json "$base_url" "$read_token" "$admin_token" || status=1

if ((status == 0)); then
    echo "typed clients: every check passed"
else
    echo "typed clients: checks failed" >&2
fi
exit "$status"
