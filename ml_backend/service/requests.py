"""Reading a request's JSON: ids in the shapes Label Studio sends, and a 400 that names the
field for anything else (never a 500 from a wrong type)."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from flask import request
from werkzeug.exceptions import BadRequest

_PROJECT_NAME = re.compile(r"[1-9][0-9]*(\.[0-9]+)?")  # "12" or "12.1700000000"
_ID_TEXT = re.compile(r"[1-9][0-9]*")


class InvalidRequest(Exception):
    """A request the route cannot use; answered 400 with the message."""


def project_id_of(value: Any) -> int:
    """Label Studio names a project as ``"<id>.<created timestamp>"``, an id, or a dict with ``id``."""
    if isinstance(value, Mapping):
        value = value.get("id")
    found = _positive_id(value.split(".", 1)[0] if isinstance(value, str) and _PROJECT_NAME.fullmatch(value)
                         else value)
    if found is None:
        raise ValueError(f"'project' must be a positive project id like 12 or '12.1700000000', got {value!r}")
    return found


def object_id_of(value: Any, what: str) -> int:
    """A task or annotation id: a positive integer (or its digits as text); 1.5, "1.5", True raise."""
    found = _positive_id(value)
    if found is None:
        raise ValueError(f"{what} must be a positive integer id, got {value!r}")
    return found


def _positive_id(value: Any) -> int | None:
    """``value`` as a positive integer id when it is one (an int, not a bool, or its digits as text)."""
    if isinstance(value, str) and _ID_TEXT.fullmatch(value):
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def annotation_ids_of(action: str, data: Mapping[str, Any]) -> list[int]:
    """Ids of the annotations an event names: ``annotation`` (one, or a list for
    ANNOTATIONS_CREATED) or ``annotations`` (ANNOTATIONS_DELETED)."""
    key = "annotations" if action == "ANNOTATIONS_DELETED" else "annotation"
    found = data.get(key)
    items = [found] if isinstance(found, Mapping) else found
    if not isinstance(items, list) or not items:
        raise ValueError(f"{action} needs '{key}': an annotation object or a list of them, got {found!r}")
    ids = []
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"'{key}[{n}]' must be an annotation object with an 'id', got {item!r}")
        ids.append(object_id_of(item.get("id"), f"'{key}[{n}].id'"))
    return ids


def json_body() -> dict:
    """The request's JSON object; InvalidRequest for anything else."""
    try:
        data = request.get_json(force=True)
    except BadRequest:
        raise InvalidRequest("request body is not valid JSON; send a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def project_from(value: Any, where: str = "'project'") -> int:
    """:func:`project_id_of`, its message naming the field as the route received it."""
    try:
        return project_id_of(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc).replace("'project'", where, 1)) from None


def checked(parse: Callable[..., Any], *args: Any) -> Any:
    """``parse(*args)`` with its ValueError answered as a 400."""
    try:
        return parse(*args)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
