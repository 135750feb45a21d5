"""Compile `google.api.http` path templates into a router: literal > `{var}` > `{var=**}`, no ambiguity.

    router = Router.from_bindings(bindings(descriptors))
    match = router.match("GET", "/servers/nonce")   # -> Match(route for GetNonce, {})

Matching works on raw segments (split on "/" before percent-decoding), so `%2F` inside a variable never
changes the route. Among templates that match a path, the most specific wins, compared segment by segment
from the left (literal beats single variable beats deep wildcard). Two templates of the same HTTP method with
the same shape (`/a/{x}` and `/a/{y}`) are refused at start-up: which one answers would otherwise depend on
declaration order (grpc-gateway's "last registered wins" pitfall).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from gantry_server.http_rules import HttpBinding

LITERAL, VAR, DEEP = 0, 1, 2  # segment kinds; a smaller number is more specific
_VAR_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_.]*)(?:=(.*))?\}$")


class AmbiguousRoutes(ValueError):
    """Two HTTP rules of one method would match the same paths with the same specificity."""


class BadPathVariable(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Segment:
    kind: int
    text: str = ""  # LITERAL: the literal; VAR/DEEP: the field path it binds


@dataclass(frozen=True)
class Route:
    verb: str
    template: str
    segments: tuple[Segment, ...]
    binding: HttpBinding | None = None

    @property
    def shape(self) -> tuple:
        return tuple((s.kind, s.text if s.kind == LITERAL else "") for s in self.segments)

    @property
    def variables(self) -> list[str]:
        return [s.text for s in self.segments if s.kind != LITERAL]


@dataclass(frozen=True)
class Match:
    route: Route
    params: dict[str, str]


def compile_template(template: str) -> tuple[Segment, ...]:
    if not template.startswith("/"):
        raise ValueError(f"path template must start with '/': {template!r}")
    if ":" in template.rsplit("/", 1)[-1] and "}" not in template.rsplit("/", 1)[-1]:
        raise ValueError(f"custom verbs are not supported: {template!r}")
    out: list[Segment] = []
    parts = template[1:].split("/")
    for i, part in enumerate(parts):
        m = _VAR_RE.match(part)
        if m is None:
            if "{" in part or "}" in part or part in ("*", "**"):
                raise ValueError(f"unsupported segment {part!r} in {template!r}")
            out.append(Segment(LITERAL, part))
            continue
        name, sub = m.group(1), m.group(2)
        if sub in (None, "*"):
            out.append(Segment(VAR, name))
        elif sub == "**":
            if i != len(parts) - 1:
                raise ValueError(f"'**' must be the last segment: {template!r}")
            out.append(Segment(DEEP, name))
        else:
            raise ValueError(f"variable pattern {sub!r} not supported in {template!r}")
    return tuple(out)


def _decode(name: str, raw: str, deep: bool) -> str:
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadPathVariable(name, "is not valid UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadPathVariable(name, "contains control characters")
    pieces = value.split("/") if deep else [value]
    if not deep and "/" in value:
        raise BadPathVariable(name, "must be a single path segment (no '/')")
    if any(p in (".", "..") for p in pieces):
        raise BadPathVariable(name, "must not be a relative path segment ('.' or '..')")
    return value


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._check_ambiguity()
        # First-segment index keeps matching cheap: only routes sharing the first literal are tried.
        self._by_first: dict[str, list[Route]] = {}
        self._wild_first: list[Route] = []
        for r in routes:
            first = r.segments[0] if r.segments else Segment(LITERAL, "")
            if first.kind == LITERAL:
                self._by_first.setdefault(first.text, []).append(r)
            else:
                self._wild_first.append(r)
        key = lambda r: tuple(s.kind for s in r.segments)  # noqa: E731 - lexicographic specificity
        for bucket in self._by_first.values():
            bucket.sort(key=key)
        self._wild_first.sort(key=key)

    @classmethod
    def from_bindings(cls, bindings: list[HttpBinding]) -> "Router":
        return cls([Route(b.verb, b.path, compile_template(b.path), b) for b in bindings])

    @classmethod
    def from_templates(cls, pairs: list[tuple[str, str]]) -> "Router":
        """For tests and tools: (verb, template) pairs without descriptors."""
        return cls([Route(v, t, compile_template(t)) for v, t in pairs])

    def _check_ambiguity(self) -> None:
        seen: dict[tuple, Route] = {}
        for r in self.routes:
            key = (r.verb, r.shape)
            if key in seen:
                raise AmbiguousRoutes(
                    f"{r.verb} {r.template} and {r.verb} {seen[key].template} match the same paths; "
                    "rename a path or make one segment literal")
            seen[key] = r

    @staticmethod
    def _fits(route: Route, parts: list[str]) -> bool:
        segs = route.segments
        if segs and segs[-1].kind == DEEP:
            if len(parts) < len(segs) - 1:
                return False
        elif len(parts) != len(segs):
            return False
        for seg, part in zip(segs, parts):
            if seg.kind == LITERAL:
                if seg.text != part:
                    return False
            elif seg.kind == VAR:
                if part == "":
                    return False
            else:
                return True
        return True

    def candidates(self, raw_path: str) -> list[Route]:
        """Every route whose template matches the path, most specific first (any HTTP method)."""
        parts = raw_path[1:].split("/") if raw_path.startswith("/") else [raw_path]
        bucket = self._by_first.get(parts[0], ())
        out = [r for r in bucket if self._fits(r, parts)]
        out.extend(r for r in self._wild_first if self._fits(r, parts))
        if self._wild_first and bucket:
            out.sort(key=lambda r: tuple(s.kind for s in r.segments))
        return out

    def match(self, verb: str, raw_path: str) -> Match | None | str:
        """Match, None (no route: 404) or "method" (the path exists for another method: 405).

        Raises BadPathVariable when a variable's value is unsafe (`..`, an encoded `/`, bad UTF-8).
        """
        found = self.candidates(raw_path)
        if not found:
            return None
        for route in found:
            if route.verb == verb:
                return Match(route, self._params(route, raw_path))
        return "method"

    def allowed(self, raw_path: str) -> list[str]:
        return sorted({r.verb for r in self.candidates(raw_path)})

    @staticmethod
    def _params(route: Route, raw_path: str) -> dict[str, str]:
        parts = raw_path[1:].split("/")
        params: dict[str, str] = {}
        for i, seg in enumerate(route.segments):
            if seg.kind == VAR:
                params[seg.text] = _decode(seg.text, parts[i], deep=False)
            elif seg.kind == DEEP:
                params[seg.text] = _decode(seg.text, "/".join(parts[i:]), deep=True)
        return params
