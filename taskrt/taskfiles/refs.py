"""Every ``$ref`` of a ``parameters`` schema that does not resolve, each at its own path.

``params.schema_problems`` refuses a schema by its first reference that does not
resolve, and looks at none while the meta-schema finds anything else wrong
(``params`` note 3): enough to refuse a schema, not to list what is wrong with
it, as a task file's report does (every problem of every file). So the loader
walks the references here, every one, whatever else is wrong, as ``params``
does: through the subschemas the schema's draft says are schemas (a ``const``
holding ``"$ref"`` is a value), each looked up from the base URI in force where
it is, nothing ever fetched. ``anchor._parameters`` puts these in place of the
one ``params`` reported, so that none is reported twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from referencing import Resource
from referencing.exceptions import InvalidAnchor, NoSuchAnchor, PointerToNowhere, Unresolvable
from referencing.jsonschema import DRAFT202012

from ..limits import shown
from ..params import META_SCHEMAS
from .problems import FieldPath

__all__ = ["unresolved"]

REFERENCES = ("$ref", "$dynamicRef")
NOT_FETCHED = "a schema outside this one is never fetched; point inside it, like '#/$defs/name'"


def unresolved(schema: Mapping[str, Any]) -> list[tuple[FieldPath, str]]:
    """Each reference in ``schema`` that does not resolve: its path and why, in no order.

    A part the meta-schema refuses (``properties: 5``, an ``$id`` that is no
    string) is skipped: ``params.schema_problems`` names it.
    """
    paths = _paths_of(schema)
    try:
        root = Resource.from_contents(schema, default_specification=DRAFT202012)
        stack = [(root, META_SCHEMAS.resolver_with_root(root))]
    except Exception:  # an unknown $schema, an $id that is no string: named by the meta-schema
        return []
    found: list[tuple[FieldPath, str]] = []
    seen: set[int] = set()  # a schema that holds itself (a YAML alias) is walked once
    while stack:
        resource, resolver = stack.pop()
        contents = resource.contents
        if isinstance(contents, Mapping):
            if id(contents) in seen:
                continue
            seen.add(id(contents))
            for keyword in REFERENCES:
                ref = contents.get(keyword)
                if not isinstance(ref, str):
                    continue
                try:
                    resolver.lookup(ref)
                except Unresolvable as exc:
                    where = (*paths.get(id(contents), ()), keyword)
                    found.append((where, f"{keyword} {shown(ref)} does not resolve: {_why(exc)}"))
                except Exception:  # a base the meta-schema refuses: named there
                    continue
        try:
            subs = [(sub, resolver.in_subresource(sub)) for sub in resource.subresources()]
        except Exception:  # a keyword of the wrong shape: named by the meta-schema check
            continue
        stack.extend(subs)
    return found


def _why(exc: Unresolvable) -> str:
    if isinstance(exc, PointerToNowhere):
        return "this schema has nothing at that JSON pointer"
    if isinstance(exc, NoSuchAnchor):
        return f"this schema has no anchor named {exc.anchor!r}"
    if isinstance(exc, InvalidAnchor):
        return str(exc)
    return NOT_FETCHED  # a schema the registry does not hold, and will not retrieve


def _paths_of(schema: Mapping[str, Any]) -> dict[int, FieldPath]:
    """Where each object of ``schema`` sits, by identity (the first place, for a shared one)."""
    paths: dict[int, FieldPath] = {}
    stack: list[tuple[Any, FieldPath]] = [(schema, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            if id(value) in paths:
                continue
            paths[id(value)] = path
            stack.extend((item, (*path, str(key))) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
    return paths
