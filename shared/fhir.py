"""FHIR helpers shared by the services: the checks fhir.resources does not make, OperationOutcome."""

from __future__ import annotations

import json
from typing import Any, cast

from fhir_core.fhirabstractmodel import FHIRAbstractModel
from starlette.responses import JSONResponse

from shared.errors import PermanentError


class FhirValidationError(PermanentError, ValueError):
    """A resource breaks a rule; ``element`` names the FHIRPath-like location."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(f"{element}: {message}")
        self.element = element


#: how deep a FHIR JSON body may nest objects and arrays. Real resources stay below ~20 (contained
#: resources, extensions of extensions); thousands of levels would exhaust the parser's recursion.
MAX_JSON_DEPTH = 100


class JsonBodyError(ValueError):
    """A request body that is not JSON, or nests deeper than :data:`MAX_JSON_DEPTH` (answer 400)."""


def json_depth_exceeds(doc: Any, max_depth: int) -> bool:
    """Whether objects/arrays in ``doc`` nest deeper than ``max_depth`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def load_json_bounded(body: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses, with :class:`JsonBodyError`, what is not JSON and what nests deeper
    than ``max_depth``: a body nested thousands deep (the parser's own recursion guard) or merely
    hundreds deep (which the recursive model validation after it would choke on)."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise JsonBodyError(f"the body nests objects/arrays deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise JsonBodyError(f"the body is not JSON: {str(exc)[:200]}") from None
    if json_depth_exceeds(doc, max_depth):
        raise JsonBodyError(f"the body nests objects/arrays deeper than {max_depth} levels")
    return doc


def check_required_bindings(model: FHIRAbstractModel, path: str | None = None) -> None:
    """Refuse codes outside required bindings (fhir.resources only checks the type).

    The allowed codes sit in ``model_fields[name].json_schema_extra["enum_values"]``.
    """
    here = path or model.get_resource_type()
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        if value is None:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        allowed = cast("list[str] | None", extra.get("enum_values"))
        element = f"{here}.{info.alias or name}"
        # fhir.resources ends an abridged value set with "+": such a list cannot refuse a code
        if allowed and "+" not in allowed and isinstance(value, str) and value not in allowed:
            raise FhirValidationError(element, f"code '{value}' is not in the required value set {allowed}")
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, FHIRAbstractModel):
                sub = f"{element}[{i}]" if isinstance(value, list) else element
                check_required_bindings(item, sub)


def operation_outcome(
    diagnostics: str, *, code: str = "invalid", severity: str = "error", expression: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


FHIR_JSON = "application/fhir+json"


def fhir_json(
    resource: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(resource, status_code=status, media_type=FHIR_JSON, headers=headers)


def outcome_response(status: int, diagnostics: str, code: str) -> JSONResponse:
    """An HTTP error the FHIR way: the status plus an OperationOutcome saying why."""
    return fhir_json(operation_outcome(diagnostics, code=code), status)
