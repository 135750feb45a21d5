"""Build a request message from path variables, the JSON body and query parameters (http.proto rules).

    builder = RequestBuilder(binding)
    request = builder.build(path_params, raw_body, query_string)   # raises TranscodeError

Sources: path variables always; with `body: "*"` every other field comes from the JSON body and the query is
ignored; with a named body field that field comes from the body and the rest from the query; with no body
everything else comes from the query. Path values are applied last, so a body cannot override the resource
the URL (and a legacy signature over the URL) names.

Query keys: proto or JSON names, dotted through singular message fields; repeated fields by repeating the key;
a second value for a singular field is an error; enums by name or number; unknown keys are ignored (grpc-gateway
parity). Every error names the field and where it came from (`loc`), so both families can render it.
"""
from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gantry_server.http_rules import HttpBinding

_INT_RE = re.compile(r"^[+-]?\d+$")
_T = FieldDescriptor
_INT_RANGES = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1), _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1), _T.TYPE_UINT32: (0, 2**32 - 1), _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1), _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1), _T.TYPE_UINT64: (0, 2**64 - 1), _T.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (_T.TYPE_DOUBLE, _T.TYPE_FLOAT)
_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n"}
_QUERY_WKT = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}


@dataclass(frozen=True)
class Violation:
    loc: tuple  # ("body", "nodes", 0, "hotkey"), ("query", "limit"), ("path", "server_id")
    msg: str
    type: str

    @property
    def field(self) -> str:
        return ".".join(str(p) for p in self.loc[1:]) or self.loc[0]


class TranscodeError(Exception):
    """The HTTP request cannot become the RPC's request message (INVALID_ARGUMENT, never reaches the server)."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.msg}" for v in violations))
        self.violations = violations


def _fail(loc: tuple, msg: str, typ: str) -> TranscodeError:
    return TranscodeError([Violation(loc, msg, typ)])


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == _T.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def _is_repeated(fd: FieldDescriptor) -> bool:
    return fd.is_repeated


def _fields_by_any_name(desc: Descriptor) -> dict[str, FieldDescriptor]:
    out = {}
    for fd in desc.fields:
        out[fd.name] = fd
        out.setdefault(fd.json_name, fd)
    return out


_NAMES_CACHE: dict[str, dict[str, FieldDescriptor]] = {}


def _names(desc: Descriptor) -> dict[str, FieldDescriptor]:
    got = _NAMES_CACHE.get(desc.full_name)
    if got is None:
        got = _NAMES_CACHE[desc.full_name] = _fields_by_any_name(desc)
    return got


# ---------------------------------------------------------------- JSON values -> message fields

def _json_scalar(fd: FieldDescriptor, value, loc: tuple):
    t = fd.type
    if t in _INT_RANGES:
        if isinstance(value, bool):
            raise _fail(loc, "Input should be a valid integer", "int_type")
        if isinstance(value, float):
            if not value.is_integer():
                raise _fail(loc, "Input should be a valid integer, got a number with a fractional part",
                            "int_from_float")
            value = int(value)
        elif isinstance(value, str):
            if not _INT_RE.match(value.strip()):
                raise _fail(loc, "Input should be a valid integer, unable to parse string as an integer",
                            "int_parsing")
            value = int(value)
        elif not isinstance(value, int):
            raise _fail(loc, "Input should be a valid integer", "int_type")
        lo, hi = _INT_RANGES[t]
        if not lo <= value <= hi:
            raise _fail(loc, f"Input should be between {lo} and {hi}", "int_range")
        return value
    if t in _FLOATS:
        if isinstance(value, bool):
            raise _fail(loc, "Input should be a valid number", "float_type")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
            if value in special:
                return special[value]
            try:
                return float(value)
            except ValueError:
                raise _fail(loc, "Input should be a valid number, unable to parse string as a number",
                            "float_parsing") from None
        raise _fail(loc, "Input should be a valid number", "float_type")
    if t == _T.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise _fail(loc, "Input should be a valid boolean", "bool_type")
    if t == _T.TYPE_STRING:
        if isinstance(value, str):
            return value
        raise _fail(loc, "Input should be a valid string", "string_type")
    if t == _T.TYPE_BYTES:
        if not isinstance(value, str):
            raise _fail(loc, "Input should be a base64 string", "bytes_type")
        return _b64(value, loc)
    if t == _T.TYPE_ENUM:
        return _enum(fd, value, loc)
    raise _fail(loc, "unsupported field type", "value_error")  # pragma: no cover


def _b64(value: str, loc: tuple) -> bytes:
    try:
        padded = value + "=" * (-len(value) % 4)
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise _fail(loc, "Input should be valid base64", "base64_decode") from None


def _enum(fd: FieldDescriptor, value, loc: tuple) -> int:
    et = fd.enum_type
    if isinstance(value, str):
        v = et.values_by_name.get(value)
        if v is not None:
            return v.number
        if _INT_RE.match(value) and int(value) in et.values_by_number:
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool) and value in et.values_by_number:
        return value
    names = ", ".join(repr(v.name) for v in et.values)
    raise _fail(loc, f"Input should be {names}", "enum")


def _set_wkt(sub: Message, value, loc: tuple) -> None:
    try:
        json_format.ParseDict(value, sub, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise _fail(loc, f"Invalid value for {sub.DESCRIPTOR.name}: {str(exc).splitlines()[0][:200]}",
                    "value_error") from None


def _fill_message(msg: Message, data, loc: tuple, skip: frozenset = frozenset()) -> None:
    desc = msg.DESCRIPTOR
    if desc.full_name.startswith("google.protobuf."):
        _set_wkt(msg, data, loc)
        return
    if not isinstance(data, dict):
        raise _fail(loc, "Input should be a valid dictionary or object to extract fields from",
                    "model_attributes_type")
    names = _names(desc)
    oneofs: dict[str, str] = {}
    for key, value in data.items():
        fd = names.get(key)
        if fd is None or fd.name in skip:
            continue  # unknown JSON fields are ignored (the legacy servers ignore them too)
        floc = loc + (fd.name,)
        oneof = fd.containing_oneof
        if oneof is not None and value is not None and not _synthetic(oneof):
            if oneof.name in oneofs:
                raise _fail(floc, f"only one of the {oneof.name} fields may be set (also got {oneofs[oneof.name]})",
                            "value_error")
            oneofs[oneof.name] = fd.name
        _set_field(msg, fd, value, floc)


def _synthetic(oneof) -> bool:
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _set_field(msg: Message, fd: FieldDescriptor, value, loc: tuple) -> None:
    if value is None:
        if fd.type == _T.TYPE_MESSAGE and fd.message_type.full_name == "google.protobuf.Value":
            getattr(msg, fd.name).null_value = 0
        return  # proto3 JSON: null means "default"
    if _is_map(fd):
        if not isinstance(value, dict):
            raise _fail(loc, "Input should be a valid dictionary", "dict_type")
        target = getattr(msg, fd.name)
        key_fd = fd.message_type.fields_by_name["key"]
        val_fd = fd.message_type.fields_by_name["value"]
        for k, v in value.items():
            kloc = loc + (k,)
            key = _query_scalar(key_fd, k, kloc) if key_fd.type != _T.TYPE_STRING else k
            if val_fd.type == _T.TYPE_MESSAGE:
                _fill_message(target[key], v, kloc)
            else:
                if v is None:
                    raise _fail(kloc, "Input should not be null", "value_error")
                target[key] = _json_scalar(val_fd, v, kloc)
        return
    if _is_repeated(fd):
        if not isinstance(value, list):
            raise _fail(loc, "Input should be a valid list", "list_type")
        target = getattr(msg, fd.name)
        if fd.type == _T.TYPE_MESSAGE:
            for i, item in enumerate(value):
                _fill_message(target.add(), item, loc + (i,))
        else:
            target.extend(_json_scalar(fd, item, loc + (i,)) for i, item in enumerate(value))
        return
    if fd.type == _T.TYPE_MESSAGE:
        sub = getattr(msg, fd.name)
        _fill_message(sub, value, loc)
        if not sub.ListFields():
            sub.SetInParent()  # `{}` sets the field (presence), as in proto3 JSON
        return
    setattr(msg, fd.name, _json_scalar(fd, value, loc))


# ---------------------------------------------------------------- query strings -> message fields

def _query_scalar(fd: FieldDescriptor, raw: str, loc: tuple):
    t = fd.type
    if t in _INT_RANGES:
        if not _INT_RE.match(raw.strip()):
            raise _fail(loc, "Input should be a valid integer, unable to parse string as an integer", "int_parsing")
        return _json_scalar(fd, int(raw), loc)
    if t in _FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise _fail(loc, "Input should be a valid number, unable to parse string as a number",
                        "float_parsing") from None
    if t == _T.TYPE_BOOL:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise _fail(loc, "Input should be a valid boolean, unable to interpret input", "bool_parsing")
    if t == _T.TYPE_STRING:
        return raw
    if t == _T.TYPE_BYTES:
        return _b64(raw, loc)
    if t == _T.TYPE_ENUM:
        return _enum(fd, raw, loc)
    raise _fail(loc, "cannot be set from a query parameter", "value_error")  # pragma: no cover


def _resolve(desc: Descriptor, dotted: str) -> list[FieldDescriptor] | None:
    """Field path for a dotted name through singular message fields; None if it names no field."""
    chain: list[FieldDescriptor] = []
    current = desc
    for part in dotted.split("."):
        if current is None:
            return None
        fd = _names(current).get(part)
        if fd is None:
            return None
        chain.append(fd)
        is_msg = fd.type == _T.TYPE_MESSAGE and not fd.message_type.full_name.startswith("google.protobuf.")
        current = fd.message_type if is_msg and not _is_repeated(fd) else None
    return chain


def _apply_query_value(msg: Message, chain: list[FieldDescriptor], values: list[str]) -> None:
    target = msg
    for fd in chain[:-1]:
        target = getattr(target, fd.name)
    leaf = chain[-1]
    loc = ("query", ".".join(fd.name for fd in chain))
    if _is_map(leaf) or (_is_repeated(leaf) and leaf.type == _T.TYPE_MESSAGE):
        raise _fail(loc, "cannot be set from a query parameter", "value_error")
    if _is_repeated(leaf):
        getattr(target, leaf.name).extend(_query_scalar(leaf, v, loc) for v in values)
        return
    if len(values) > 1:
        raise _fail(loc, f"too many values: expected one, got {len(values)}", "value_error")
    raw = values[0]
    if leaf.type == _T.TYPE_MESSAGE:
        full = leaf.message_type.full_name
        if full not in _QUERY_WKT:
            raise _fail(loc, "cannot be set from a query parameter", "value_error")
        try:
            getattr(target, leaf.name).FromJsonString(raw)
        except ValueError as exc:
            raise _fail(loc, f"Invalid value for {leaf.message_type.name}: {exc}", "value_error") from None
        return
    setattr(target, leaf.name, _query_scalar(leaf, raw, loc))


def parse_query(query: bytes | str) -> dict[str, list[str]]:
    """`a=1&a=2&b=` -> {"a": ["1", "2"], "b": [""]}; invalid UTF-8 is an error naming the query."""
    if isinstance(query, bytes):
        try:
            query = query.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            raise _fail(("query",), "invalid query string", "value_error") from None
    out: dict[str, list[str]] = {}
    if not query:
        return out
    try:
        pairs = parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _fail(("query",), "query string is not valid UTF-8", "value_error") from None
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


# ---------------------------------------------------------------- per-binding builder

class RequestBuilder:
    """Per HTTP rule: which fields come from where, decided once at start-up."""

    def __init__(self, binding: HttpBinding, path_fields: list[str]) -> None:
        self.binding = binding
        self.message_class = _message_class(binding.method.input_type)
        self.desc = binding.method.input_type
        self.path_fields = path_fields
        top_path = frozenset(p.split(".")[0] for p in path_fields)
        self.body = binding.body
        if self.body and self.body != "*" and self.body not in self.desc.fields_by_name:
            raise ValueError(f"{binding.method.full_name}: body field {self.body!r} does not exist")
        self._path_top = top_path
        self.body_fields = (
            [f for f in self.desc.fields if f.name not in top_path] if self.body == "*"
            else [self.desc.fields_by_name[self.body]] if self.body else [])
        self.needs_body = bool(self.body_fields)
        self.query_allowed = self.body != "*"

    def build(self, params: dict[str, str], raw_body: bytes, query: bytes | str) -> Message:
        msg = self.message_class()
        if self.body:
            self._apply_body(msg, raw_body)
        if self.query_allowed and query:
            self._apply_query(msg, parse_query(query))
        for dotted, value in params.items():
            self._apply_path(msg, dotted, value)
        return msg

    def _apply_body(self, msg: Message, raw_body: bytes) -> None:
        if not raw_body.strip():
            if self.needs_body:
                raise _fail(("body",), "Field required", "missing")
            return
        try:
            data = orjson.loads(raw_body)
        except orjson.JSONDecodeError as exc:
            raise TranscodeError([Violation(("body", exc.pos), f"JSON decode error: {exc.msg}", "json_invalid")]) \
                from None
        if self.body == "*":
            _fill_message(msg, data, ("body",), skip=self._path_top)
        else:
            _set_field(msg, self.desc.fields_by_name[self.body], data, ("body",))

    def _apply_query(self, msg: Message, query: dict[str, list[str]]) -> None:
        for key, values in query.items():
            chain = _resolve(self.desc, key)
            if chain is None or chain[0].name in self._path_top or (self.body and chain[0].name == self.body):
                continue  # unknown keys and fields bound elsewhere are ignored
            _apply_query_value(msg, chain, values)

    def _apply_path(self, msg: Message, dotted: str, value: str) -> None:
        chain = _resolve(self.desc, dotted)
        if chain is None:  # pragma: no cover - checked at start-up
            raise _fail(("path", dotted), "unknown path field", "value_error")
        target = msg
        for fd in chain[:-1]:
            target = getattr(target, fd.name)
        leaf = chain[-1]
        loc = ("path", dotted)
        if leaf.type == _T.TYPE_MESSAGE or _is_repeated(leaf):
            raise _fail(loc, "cannot be bound from the path", "value_error")  # pragma: no cover
        setattr(target, leaf.name, _query_scalar(leaf, value, loc))


def _message_class(desc: Descriptor) -> type:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def check_path_fields(binding: HttpBinding, variables: list[str]) -> None:
    """Start-up check: every path variable names a singular scalar field of the request."""
    for dotted in variables:
        chain = _resolve(binding.method.input_type, dotted)
        if chain is None or chain[-1].type == _T.TYPE_MESSAGE or _is_repeated(chain[-1]):
            raise ValueError(f"{binding.verb} {binding.path}: path variable {dotted!r} is not a scalar field of "
                             f"{binding.method.input_type.full_name}")
