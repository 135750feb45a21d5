"""OpenAPI 3.0 document derived from the same descriptors and HTTP rules the router uses.

    doc = build_openapi(bindings(descriptors))     # served at GET /openapi.json

Schemas describe what the gateway really writes: every field present, presence fields `nullable`, int64 as
integers, enums as names, Timestamp as date-time strings; the family error bodies under `default`.
"""
from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gantry_server.http_rules import HttpBinding

from . import families as fam
from .routes import LITERAL, compile_template
from .transcode import _is_map, _resolve

_T = FieldDescriptor
_INT32 = {_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32}
_UINT32 = {_T.TYPE_UINT32, _T.TYPE_FIXED32}
_INT64 = {_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64}
_UINT64 = {_T.TYPE_UINT64, _T.TYPE_FIXED64}

_WKT = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {"type": "object", "additionalProperties": True},
}

ERROR_SCHEMAS = {
    "BrokerError": {
        "type": "object", "required": ["error", "request_id"], "additionalProperties": True,
        "properties": {"error": {"type": "string"}, "request_id": {"type": "string"},
                       "error_type": {"type": "string"}, "retry_suggested": {"type": "boolean"}},
    },
    "ValidatorError": {
        "type": "object", "required": ["detail"],
        "properties": {"detail": {"oneOf": [
            {"type": "string"},
            {"type": "array", "items": {
                "type": "object", "required": ["loc", "msg", "type"],
                "properties": {"loc": {"type": "array", "items": {"oneOf": [{"type": "string"},
                                                                            {"type": "integer"}]}},
                               "msg": {"type": "string"}, "type": {"type": "string"}}}},
        ]}},
    },
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, dict] = dict(ERROR_SCHEMAS)

    def scalar(self, fd: FieldDescriptor) -> dict:
        t = fd.type
        if t in _INT32:
            return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
        if t in _UINT32:
            return {"type": "integer", "format": "int32", "minimum": 0, "maximum": 2**32 - 1}
        if t in _INT64:
            return {"type": "integer", "format": "int64", "minimum": -(2**63), "maximum": 2**63 - 1}
        if t in _UINT64:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**64 - 1}
        if t in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
            return {"type": "number"}
        if t == _T.TYPE_BOOL:
            return {"type": "boolean"}
        if t == _T.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        if t == _T.TYPE_ENUM:
            if fd.enum_type.full_name == "google.protobuf.NullValue":
                return {"nullable": True, "enum": [None]}
            return {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
        return {"type": "string"}

    def message_ref(self, desc: Descriptor) -> dict:
        if desc.full_name in _WKT:
            return dict(_WKT[desc.full_name])
        if desc.full_name.startswith("google.protobuf.") and desc.full_name.endswith("Value"):
            return self.scalar(desc.fields_by_name["value"])
        name = desc.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder first: recursive messages
            self.components[name] = self.message(desc)
        return {"$ref": f"#/components/schemas/{name}"}

    def single(self, fd: FieldDescriptor) -> dict:
        return self.message_ref(fd.message_type) if fd.type == _T.TYPE_MESSAGE else self.scalar(fd)

    def field(self, fd: FieldDescriptor) -> dict:
        if _is_map(fd):
            return {"type": "object", "additionalProperties": self.single(fd.message_type.fields_by_name["value"])}
        if fd.is_repeated:
            return {"type": "array", "items": self.single(fd)}
        schema = self.single(fd)
        if fd.has_presence:
            if "$ref" in schema:
                return {"allOf": [schema], "nullable": True}
            if schema:
                schema = {**schema, "nullable": True}
        return schema

    def message(self, desc: Descriptor, skip: frozenset = frozenset()) -> dict:
        props = {fd.name: self.field(fd) for fd in desc.fields if fd.name not in skip}
        return {"type": "object", "properties": props}


def _query_params(schemas: _Schemas, desc: Descriptor, prefix: str = "", depth: int = 0) -> list[dict]:
    out = []
    for fd in desc.fields:
        name = prefix + fd.name
        if fd.type == _T.TYPE_MESSAGE:
            full = fd.message_type.full_name
            if full in ("google.protobuf.Timestamp", "google.protobuf.Duration") and not fd.is_repeated:
                out.append({"name": name, "in": "query", "required": False, "schema": dict(_WKT[full])})
            elif not fd.is_repeated and not full.startswith("google.protobuf.") and depth < 2:
                out.extend(_query_params(schemas, fd.message_type, name + ".", depth + 1))
            continue
        schema = schemas.scalar(fd)
        if fd.is_repeated:
            schema = {"type": "array", "items": schema}
        param = {"name": name, "in": "query", "required": False, "schema": schema}
        if fd.is_repeated:
            param.update(style="form", explode=True)
        out.append(param)
    return out


def _success_content(schemas: _Schemas, b: HttpBinding) -> dict:
    full = b.method.full_name
    out = b.method.output_type
    if b.method.server_streaming:
        framing = fam.STREAMS.get(full, fam.Stream()).framing
        media = {fam.SSE_ROWS: "text/event-stream", fam.SSE_LOG: "text/event-stream", fam.CSV: "text/csv",
                 fam.SSE_RAW: "text/event-stream", fam.NDJSON: "application/x-ndjson"}[framing]
        return {media: {"schema": {"type": "string"}}}
    kind = fam.UNARY.get(full, fam.Unary()).kind
    if kind in (fam.TEXT, fam.RAW):
        return {"text/plain": {"schema": {"type": "string"}}}
    if b.response_body:
        schema = schemas.field(out.fields_by_name[b.response_body])
    else:
        schema = schemas.message_ref(out)
    return {"application/json": {"schema": schema}}


def build_openapi(bindings: list[HttpBinding], *, title: str = "Gantry REST gateway", version: str = "1") -> dict:
    schemas = _Schemas()
    paths: dict[str, dict] = {}
    seen_ids: set[str] = set()
    for b in bindings:
        segments = compile_template(b.path)
        openapi_path = "/" + "/".join(s.text if s.kind == LITERAL else "{" + s.text + "}" for s in segments)
        variables = [s.text for s in segments if s.kind != LITERAL]
        inp = b.method.input_type
        params = []
        for var in variables:
            chain = _resolve(inp, var)
            params.append({"name": var, "in": "path", "required": True, "schema": schemas.scalar(chain[-1])})
        top_path = frozenset(v.split(".")[0] for v in variables)
        op: dict = {
            "operationId": _unique(f"{b.method.containing_service.name}_{b.method.name}", seen_ids),
            "summary": b.method.full_name,
            "tags": [b.method.containing_service.full_name],
        }
        if b.body == "*":
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": schemas.message(inp, skip=top_path)}}}
        elif b.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": schemas.field(inp.fields_by_name[b.body])}}}
        if b.body != "*":
            skip = top_path | ({b.body} if b.body else set())
            params.extend(p for p in _query_params(schemas, inp) if p["name"].split(".")[0] not in skip)
        if params:
            op["parameters"] = params
        success = fam.SUCCESS_STATUS.get(b.method.full_name, 200)
        content = _success_content(schemas, b)
        error_ref = "BrokerError" if fam.family_of(b.path) == fam.BROKER else "ValidatorError"
        responses = {str(success): {"description": "success", "content": content}}
        for _, _, code in fam.UNARY.get(b.method.full_name, fam.Unary()).status_when:
            responses[str(code)] = {"description": "not ready (same body)", "content": content}
        responses["default"] = {"description": "error in the API family's legacy body", "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{error_ref}"}}}}
        op["responses"] = responses
        paths.setdefault(openapi_path, {})[b.verb.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version,
                 "description": "Legacy REST paths of Gantry, transcoded from the gRPC services."},
        "paths": paths,
        "components": {"schemas": schemas.components},
    }


def _unique(name: str, seen: set[str]) -> str:
    out, i = name, 2
    while out in seen:
        out, i = f"{name}_{i}", i + 1
    seen.add(out)
    return out
