"""config/schema.yaml: the one source of the config's defaults, and its validation.

Snakemake hands `--config` values over as strings ("model_config={n_head: 4}" arrives as
{"n_head": "4"}, because it parses them with YAML's BaseLoader), so strings are first
coerced to the type the schema asks for. Then the schema fills in every default and
validates; an error names the dotted key, e.g. `runs.wide.model_config.n_embd: ...`.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import jsonschema
import yaml

from storylm.io.entry import StageError, non_finite

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"

JSON_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None), "string": str,
              "array": list, "object": dict}


class SchemaError(StageError):
    """A config value the schema rejects; the message starts with the dotted key."""


@cache
def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def _types(spec: dict) -> list[str]:
    kind = spec.get("type")
    if kind is None and "enum" in spec:
        return sorted({_json_type(v) for v in spec["enum"]})
    return [kind] if isinstance(kind, str) else list(kind or [])


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def _matches(value, types: list[str]) -> bool:
    if isinstance(value, bool):
        return "boolean" in types
    return any(isinstance(value, JSON_TYPES[t]) for t in types)


def coerce(value, spec: dict):
    """value with every string leaf the schema types otherwise parsed as YAML (a copy)."""
    types = _types(spec)
    if isinstance(value, str) and types and "string" not in types:
        parsed = yaml.safe_load(value) if value.strip() else None
        return coerce(parsed, spec) if _matches(parsed, types) else value
    if isinstance(value, str) and not types and not spec.get("properties"):
        # A free-form leaf (optimizer.init_args.lr): numbers, booleans and null as YAML reads them.
        parsed = yaml.safe_load(value) if value.strip() else value
        return parsed if isinstance(parsed, (int, float, bool, type(None))) else value
    if isinstance(value, dict):
        props, extra = spec.get("properties", {}), spec.get("additionalProperties")
        return {key: coerce(item, props.get(key, extra if isinstance(extra, dict) else {}))
                for key, item in value.items()}
    if isinstance(value, list):
        items = spec.get("items", {})
        return [coerce(item, items) for item in value]
    return value


def _with_defaults(validator_class):
    """A validator that fills in each property's default before validating it (jsonschema's FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, spec in properties.items():
                if "default" in spec and key not in instance:
                    instance[key] = copy.deepcopy(spec["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


DefaultsValidator = _with_defaults(jsonschema.Draft202012Validator)


def dotted(path) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


def validate(config: dict, schema: dict | None = None, prefix: str = "") -> dict:
    """A copy of config, coerced and with every default filled in; SchemaError names the first bad key."""
    schema = schema or load_schema()
    config = coerce(copy.deepcopy(config), schema)
    errors = sorted(DefaultsValidator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        error = errors[0]
        key = (prefix + dotted(error.absolute_path)).rstrip(".")
        raise SchemaError(f"{key or '(config)'}: {error.message}")
    bad = non_finite(config)
    if bad is not None:  # NaN passes every minimum and maximum (each comparison is false)
        key, value = bad
        raise SchemaError(f"{prefix}{key}: {value} is not a finite number")
    return config


def defaults(schema: dict | None = None) -> dict:
    """The config that an empty config file gives: every default of the schema."""
    return validate({}, schema)
