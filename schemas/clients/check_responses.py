"""Validates live responses of every dbguard route with the pydantic models generated from
openapi.json, and checks that each status a route answers is documented there.

    python check_responses.py OPENAPI_JSON BASE_URL READ_TOKEN ADMIN_TOKEN

The generated models (dbguard_models) must be importable. For each request the document says
which component(s) the answer's status carries (the route must list the status itself); the
body must validate against one of them, and carry no field the model does not know.
Exits 1 on any mismatch.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import dbguard_models as models
from pydantic import BaseModel, ValidationError

SCHEMAS = "#/components/schemas/"
RESPONSES = "#/components/responses/"


@dataclass
class Case:
    """One request and the statuses it may answer."""

    method: str
    path: str
    statuses: tuple[int, ...]
    token: str | None = None
    body: bytes | None = None
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    label: str = ""


def cases(read: str, admin: str) -> list[Case]:
    select_one = models.TestRequest(query="SELECT 1 AS one")
    limited = models.TestRequest(
        query="SELECT $1::int AS n FROM generate_series(1, 5)", params=[7], max_rows=2, timeout_ms=5000
    )

    def body(request: models.TestRequest) -> bytes:
        # exclude_unset: what a client leaves out stays out (params, max_rows, timeout_ms).
        return request.model_dump_json(exclude_unset=True).encode()

    def sql(text: str, **limits: Any) -> bytes:
        return body(models.TestRequest(query=text, **limits))

    return [
        Case("GET", "/api/database/health", (200,), read),
        Case("GET", "/api/database/health?force=true", (200,), read),
        Case("GET", "/api/database/health?force=maybe", (400,), read, label="bad query string"),
        Case("GET", "/api/database/health", (401,), None, label="no token"),
        Case("GET", "/api/database/info", (200,), read),
        Case("GET", "/api/database/status", (200,), read),
        Case("GET", "/api/database/queries", (200,), read),
        Case("POST", "/api/database/test", (200,), admin, body(select_one)),
        Case("POST", "/api/database/test", (200,), admin, body(limited), label="params, max_rows"),
        Case("POST", "/api/database/test", (400,), admin, sql("SELEC 1"), label="bad SQL"),
        Case("POST", "/api/database/test", (400,), admin, b'{"query": "SELECT 1", "extra": 1}', label="unknown field"),
        Case("POST", "/api/database/test", (403,), admin, sql("CREATE TABLE typed_clients_refused (x int)"), label="write"),
        Case("POST", "/api/database/test", (403,), read, body(select_one), label="db:read token"),
        Case("POST", "/api/database/test", (504,), admin, sql("SELECT pg_sleep(5)", timeout_ms=100), label="timeout"),
        Case("POST", "/api/database/test", (415,), admin, b"SELECT 1", "text/plain", label="not JSON"),
        Case("POST", "/api/database/test", (413,), admin, b'{"query": "' + b" " * (70 * 1024) + b'"}', label="70 KiB"),
        Case("POST", "/api/database/reconnect", (200,), admin, content_type=None),
        Case("GET", "/api/plugins", (200,), read),
        Case("POST", "/api/plugins/reload", (200, 409), admin, content_type=None),
        Case("GET", "/livez", (200,)),
        Case("GET", "/readyz", (200,)),
        Case("GET", "/api/openapi.json", (200,)),
        Case("GET", "/metrics", (200,)),
        Case("GET", "/api/no-such-route", (404,), read),
        Case("DELETE", "/api/database/health", (405,), read),
        Case("POST", "/livez", (405,), content_type=None),
    ]


def send(base: str, case: Case) -> tuple[int, str, bytes, dict[str, str]]:
    headers = dict(case.headers)
    if case.token:
        headers["Authorization"] = f"Bearer {case.token}"
    if case.content_type and case.body is not None:
        headers["Content-Type"] = case.content_type
    request = urllib.request.Request(base + case.path, data=case.body, method=case.method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("content-type", ""), response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read(), dict(err.headers)


def documented(document: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any] | None:
    """The document's response for `status` of `method path`, following `$ref`s. A listed
    route must list the status itself: `default` covers what no route can list (a path the
    document does not have answers as `Error`), not a status a route was seen to send. A
    method a path does not list answers as the path's other operations say (405)."""
    route = path.split("?", 1)[0]
    operations = document["paths"].get(route)
    if operations is None:
        return resolve(document, {"$ref": RESPONSES + "Error"})
    operation = operations.get(method.lower())
    if operation is None:
        listed = [op["responses"][str(status)] for op in operations.values() if str(status) in op["responses"]]
        return resolve(document, listed[0]) if listed else None
    responses = operation["responses"]
    entry = responses.get(str(status))
    return resolve(document, entry) if entry else None


def resolve(document: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in entry:
        name = entry["$ref"].removeprefix(RESPONSES)
        entry = document["components"]["responses"][name]
    return entry


def component_names(schema: dict[str, Any]) -> list[str]:
    """The component schemas a response schema names: one `$ref`, or each branch of a oneOf."""
    if "$ref" in schema:
        return [schema["$ref"].removeprefix(SCHEMAS)]
    return [name for branch in schema.get("oneOf", []) for name in component_names(branch)]


def undocumented(model: Any, raw: Any, where: str = "$") -> list[str]:
    """Fields in `raw` that `model` dropped: pydantic ignores unknown fields by default, and a
    field the document does not name is a mismatch too. Models whose schema is open
    (`additionalProperties: true`, extra='allow') accept anything."""
    found: list[str] = []
    if isinstance(model, BaseModel) and isinstance(raw, dict):
        fields = type(model).model_fields
        known = {info.alias or name: name for name, info in fields.items()}
        if type(model).model_config.get("extra") != "allow":
            found += [f"{where}.{key}" for key in raw if key not in known]
        for key, name in known.items():
            if key in raw:
                found += undocumented(getattr(model, name), raw[key], f"{where}.{key}")
    elif isinstance(model, list) and isinstance(raw, list):
        for index, (item, raw_item) in enumerate(zip(model, raw)):
            found += undocumented(item, raw_item, f"{where}[{index}]")
    elif isinstance(model, dict) and isinstance(raw, dict):
        for key, value in model.items():
            if key in raw:
                found += undocumented(value, raw[key], f"{where}.{key}")
    return found


def check(document: dict[str, Any], base: str, case: Case) -> tuple[bool, str, int]:
    status, content_type, raw, headers = send(base, case)
    if status not in case.statuses:
        return False, f"expected {case.statuses}, got {status}: {raw[:300]!r}", status
    response = documented(document, case.method, case.path, status)
    if response is None:
        return False, f"status {status} is not documented for {case.method} {case.path}", status
    media = content_type.split(";", 1)[0].strip()
    content = response.get("content", {})
    if media not in content:
        return False, f"{media} is not a documented content type ({list(content)})", status
    if media != "application/json":
        return bool(raw), f"{len(raw)} bytes of {content_type}", status
    body = json.loads(raw)
    names = component_names(content[media]["schema"])
    errors = []
    for name in names:
        model = getattr(models, name, None)
        if model is None:
            errors.append(f"no generated model {name}")
            continue
        try:
            parsed = model.model_validate(body)
        except ValidationError as err:
            errors.append(f"{name}: {err}")
            continue
        extra = undocumented(parsed, body)
        if extra:
            errors.append(f"{name}: undocumented fields {extra}")
            continue
        if status == 401 and headers.get("WWW-Authenticate", headers.get("www-authenticate")) != "Bearer":
            return False, "401 without WWW-Authenticate: Bearer", status
        summary = f"error {body['error']}" if body.get("success") is False else "success" if body.get("success") else "document"
        return True, f"{name} ({summary})", status
    return False, "; ".join(errors) or f"no schema for {names}", status


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    document_path, base, read, admin = sys.argv[1:]
    with open(document_path, encoding="utf-8") as file:
        document = json.load(file)

    failures = 0
    # The request model itself: params defaults to a list, and null is not a list.
    request = models.TestRequest(query="SELECT 1")
    try:
        models.TestRequest(query="SELECT 1", params=None)
        nullable = True
    except ValidationError:
        nullable = False
    if request.params != [] or nullable or request.max_rows is not None or request.timeout_ms is not None:
        failures += 1
        print("[py] FAIL TestRequest: params must default to [] and refuse null; max_rows, timeout_ms optional")

    for case in cases(read, admin):
        passed, detail, status = check(document, base.rstrip("/"), case)
        label = f" ({case.label})" if case.label else ""
        print(f"[py] {'ok' if passed else 'FAIL'} {status} {case.method} {case.path}{label}: {detail}")
        failures += 0 if passed else 1
    print("[py] all checks passed" if failures == 0 else f"[py] {failures} checks failed")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
