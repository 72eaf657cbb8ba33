"""Data requirements: what a module needs (`input_data`) and makes (`output_data`).

The seed's `DataRequirement` model. Each entry has a `name` (the data's identity:
an input is fed by the output of the same name) and optional typed details:

- `fields`: list of field/column names the data carries;
- `frequency`: how often it changes ("1d", "1min", "tick", ... free text);
- `source`: where it lives (a table, a path, an upstream system);
- `optional`: on an input, the module can run without it;
- `description`: free text for operators.

Other keys are kept as given (older clients send e.g. `"type": "list"`), so a
registration is stored as sent once it is valid. Registration parses and validates
once (`parse_requirement_list`); stored documents are read back leniently
(`DataRequirement.from_doc`), since modules registered before details were checked
may hold anything beside their name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import Invalid
from .payload import PayloadError, check_value, read_json

MAX_REQUIREMENTS = 200
MAX_NAME = 200
MAX_FIELDS = 500
MAX_TEXT = 2000
DETAIL_KEYS = ("fields", "frequency", "source", "optional", "description")


@dataclass(frozen=True)
class DataRequirement:
    """One entry of a module's input_data or output_data, typed."""

    name: str
    fields: tuple[str, ...] = ()
    frequency: str | None = None
    source: str | None = None
    optional: bool = False
    description: str = ""
    # Keys we do not interpret, kept so that a stored registration reads back as sent.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_doc(self) -> dict[str, Any]:
        """The stored (and API) form: name, the details that are set, then extras."""
        doc: dict[str, Any] = {"name": self.name}
        if self.fields:
            doc["fields"] = list(self.fields)
        if self.frequency is not None:
            doc["frequency"] = self.frequency
        if self.source is not None:
            doc["source"] = self.source
        if self.optional:
            doc["optional"] = True
        if self.description:
            doc["description"] = self.description
        doc.update(self.extra)
        return doc

    @classmethod
    def from_doc(cls, doc: Any) -> DataRequirement | None:
        """A stored entry -> requirement; details of the wrong type are ignored and an
        entry without a usable name is None (the caller skips it)."""
        if not isinstance(doc, dict):
            return None
        name = doc.get("name")
        if not isinstance(name, str) or not name.strip():
            return None
        fields = doc.get("fields")
        return cls(
            name=name,
            fields=tuple(f for f in fields if isinstance(f, str)) if isinstance(fields, list) else (),
            frequency=doc["frequency"] if isinstance(doc.get("frequency"), str) else None,
            source=doc["source"] if isinstance(doc.get("source"), str) else None,
            optional=doc.get("optional") is True,
            description=doc["description"] if isinstance(doc.get("description"), str) else "",
            extra={k: v for k, v in doc.items() if k != "name" and k not in DETAIL_KEYS},
        )


def requirements_from_docs(docs: Any) -> tuple[DataRequirement, ...]:
    """Stored input_data/output_data -> requirements, first entry per name wins."""
    result: list[DataRequirement] = []
    seen: set[str] = set()
    for doc in docs if isinstance(docs, list) else ():
        requirement = DataRequirement.from_doc(doc)
        if requirement is not None and requirement.name not in seen:
            seen.add(requirement.name)
            result.append(requirement)
    return tuple(result)


def _text(value: Any, where: str, field_name: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{where}: expected a string", field=field_name)
    if len(value) > max_len:
        raise Invalid(f"{where}: at most {max_len} characters", field=field_name)
    return value


def _check_keys(value: Any, where: str, field_name: str, depth: int = 0) -> None:
    """Extras are stored in MongoDB documents: no operator-like or dotted keys, at any depth."""
    if depth > 32:
        raise Invalid(f"{where}: nested too deeply", field=field_name)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$") or "." in key or "\0" in key:
                raise Invalid(f"{where}: keys must not start with '$' or contain '.'", field=field_name)
            _check_keys(item, where, field_name, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, where, field_name, depth + 1)


def parse_requirement(item: Any, where: str, field_name: str) -> DataRequirement:
    """One submitted entry -> DataRequirement; Invalid names the entry and its key."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
        raise Invalid(f"{where}: expected an object with a string \"name\"", field=field_name)
    _check_keys(item, where, field_name)
    name = _text(item["name"], f"{where}.name", field_name, MAX_NAME)
    fields: tuple[str, ...] = ()
    if item.get("fields") is not None:
        raw_fields = item["fields"]
        if not isinstance(raw_fields, list) or len(raw_fields) > MAX_FIELDS:
            raise Invalid(f"{where}.fields: expected a list of at most {MAX_FIELDS} strings", field=field_name)
        for index, value in enumerate(raw_fields):
            if not isinstance(value, str) or not value or len(value) > MAX_NAME:
                raise Invalid(
                    f"{where}.fields[{index}]: expected a non-empty string of at most {MAX_NAME} characters",
                    field=field_name,
                )
        fields = tuple(raw_fields)
    optional = item.get("optional", False)
    if not isinstance(optional, bool):
        raise Invalid(f"{where}.optional: expected true or false", field=field_name)
    frequency = item.get("frequency")
    source = item.get("source")
    description = item.get("description")
    return DataRequirement(
        name=name,
        fields=fields,
        frequency=None if frequency is None else _text(frequency, f"{where}.frequency", field_name, MAX_NAME),
        source=None if source is None else _text(source, f"{where}.source", field_name, MAX_TEXT),
        optional=optional,
        description="" if description is None else _text(description, f"{where}.description", field_name, MAX_TEXT),
        extra={k: v for k, v in item.items() if k != "name" and k not in DETAIL_KEYS},
    )


def parse_requirement_list(field_name: str, raw: Any) -> list[DataRequirement]:
    """input_data / output_data as submitted (JSON text or an already-decoded list)
    -> requirements. Invalid (400) names the field and the entry; a name listed twice
    in one list is refused, since it would make "which one feeds this input" ambiguous."""
    if raw is None or raw == "":
        return []
    try:
        # The edge reader's rules (depth, NaN, 64-bit integers, no lone surrogates
        # or NULs) also for requirements sent as JSON text in a query string.
        value = read_json(raw, where=field_name) if isinstance(raw, str) else raw
        check_value(value, field_name)
    except PayloadError as exc:
        raise Invalid(str(exc), field=field_name) from None
    if not isinstance(value, list):
        raise Invalid(f"{field_name}: expected a JSON list of data requirements", field=field_name)
    if len(value) > MAX_REQUIREMENTS:
        raise Invalid(f"{field_name}: more than {MAX_REQUIREMENTS} entries", field=field_name)
    result: list[DataRequirement] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        requirement = parse_requirement(item, f"{field_name}[{index}]", field_name)
        if requirement.name in seen:
            raise Invalid(f"{field_name}[{index}].name: {requirement.name!r} is listed twice", field=field_name)
        seen.add(requirement.name)
        result.append(requirement)
    return result


def requirement_docs(requirements: Iterable[DataRequirement]) -> list[dict[str, Any]]:
    return [r.to_doc() for r in requirements]
