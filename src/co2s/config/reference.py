"""The key reference of docs/configuration.md, generated from the schema's field descriptions, so
the documentation cannot drift from what the config accepts.

    python -m co2s.config.reference --write docs/configuration.md   # refresh the generated part
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from co2s.config.schema import Config, LiteUNetConfig, StudentConfig, StudentsConfig

BEGIN = "<!-- BEGIN GENERATED KEY REFERENCE (python -m co2s.config.reference --write docs/configuration.md) -->"
END = "<!-- END GENERATED KEY REFERENCE -->"


def _model_classes(annotation) -> list[type[BaseModel]]:
    """Config classes nested in a field's type (through Optional, list, Annotated unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out += _model_classes(arg)
    return out


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float):
        value = round(value, 4)
    if isinstance(value, list):
        value = [round(v, 4) if isinstance(v, float) else v for v in value]
    return f"`{json.dumps(value)}`"


#: optional config sections (``X | None``) whose keys get their own table
OPTIONAL_SECTIONS = {"ScenesConfig", "SceneRegionsConfig"}


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    text = text.replace("co2s.config.schema.", "")
    return text.replace("|", "\\|")


def _rows(model: type[BaseModel], prefix: str, sections: list[tuple[str, type[BaseModel]]]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _model_classes(field.annotation)
        if nested and len(nested) == 1 and not typing.get_origin(field.annotation) is list \
                and field.annotation is nested[0]:
            sections.append((key, nested[0]))
            continue
        if nested and len(nested) == 1 and field.annotation == typing.Optional[nested[0]] \
                and nested[0].__name__ in OPTIONAL_SECTIONS:
            sections.append((key, nested[0]))  # an optional section: its row below, then its keys
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return rows


def _table(title: str, model: type[BaseModel], prefix: str, doc: str | None = None) -> list[str]:
    sections: list[tuple[str, type[BaseModel]]] = []
    rows = _rows(model, prefix, sections)
    lines = [f"### `{title}`", ""]
    summary = " ".join((doc or model.__doc__ or "").strip().split("\n\n")[0].split())
    if summary:
        lines += [summary, ""]
    if rows:
        lines += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for key, nested in sections:
        lines += _table(key, nested, f"{key}.")
    return lines


def markdown_reference() -> str:
    """Every key of a run config: type, default and description, section by section."""
    lines: list[str] = []
    for name, field in Config.model_fields.items():
        if name == "model":
            lines += _table("model (name: lite_unet)", LiteUNetConfig, "model.")
            lines += _table("model (name: students)", StudentsConfig, "model.")
            lines += _table("model.students[i]", StudentConfig, "model.students[i].")
            continue
        nested = _model_classes(field.annotation)
        if nested:
            lines += _table(name, nested[0], f"{name}.")
    top = [f"| `{n}` | {_type_name(f.annotation)} | {_default(f)} | {f.description or ''} |"
           for n, f in Config.model_fields.items() if not _model_classes(f.annotation)]
    head = ["### top level", "", "| key | type | default | meaning |", "|---|---|---|---|", *top, ""]
    return "\n".join(head + lines).rstrip() + "\n"


def replace_generated(text: str) -> str:
    """``text`` (docs/configuration.md) with its generated part refreshed."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the document has no generated part (markers {BEGIN!r} ... {END!r})")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n\n{markdown_reference()}\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="refresh the generated part of this Markdown file")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(replace_generated(args.write.read_text()))
    else:
        sys.stdout.write(markdown_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
