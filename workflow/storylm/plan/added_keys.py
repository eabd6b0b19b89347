"""Keys added to config/schema.yaml after the stage hashes were pinned: at their default they move no folder.

pinned_keys.txt is a snapshot of every key the schema had when tests/test_stages.py pinned the
stage hashes of the shipped configs (dotted; `[]` stands for a list's items). Any schema key not in
it is an added key, in any section and at any depth: `pinned_view` leaves it out of the config
the fingerprints see while it is at its schema default (or unset, where it has none). So:

- adding a key with a default that reproduces today's output moves no stage folder, and needs
  no list to be edited: the snapshot is never extended;
- setting it away from its default moves its stage and everything downstream, since a
  fingerprint that holds its section whole (evaluate, sample, export, shards, train, eval,
  optimizer, model_config, a source's settings) holds it then; a fingerprint that picks keys
  one by one (corpus, tokenizer, the top level for pretrain) adds `added(section, path)`;
- a command that reads an added key fills in its default with `with_added_defaults`, since
  the record it is given (the fingerprint) leaves it out at its default.

Listing a key in the snapshot makes it count at its default too: that moves folders, so only
with a deliberate change of the pins. tests/test_stages.py adds a key to every section of a copy
of the schema and checks both rules for every stage.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

from storylm.plan import schema

PINNED_KEYS_FILE = Path(__file__).with_name("pinned_keys.txt")
TOP = ""  # the path of the top-level keys (devices, strategy): pretrain's, beside the sections it holds whole
ITEMS = "[]"  # a list's items in a dotted path: evaluate.extra_sets[].name


@cache
def pinned_keys() -> frozenset[str]:
    lines = PINNED_KEYS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def schema_keys(spec: dict, path: str = TOP):
    """Every key of a schema (or of one section's spec), dotted, in the schema's order."""
    for key, sub in spec.get("properties", {}).items():
        yield join(path, key)
        yield from schema_keys(sub, join(path, key))
    if isinstance(spec.get("items"), dict):
        yield from schema_keys(spec["items"], path + ITEMS)


@cache
def pinned_sections() -> frozenset[str]:
    """The top-level sections the pinned schema had (a new stage brings a new one)."""
    return frozenset(key.split(".", 1)[0].split(ITEMS, 1)[0] for key in pinned_keys() if "." in key)


def new_section(path: str, key: str) -> bool:
    """Whether a top-level key is the section of a stage added since the pins (its settings, read whole)."""
    spec = schema.load_schema()["properties"].get(key, {})
    return path == TOP and "properties" in spec and key not in pinned_sections()


def pinned_view(config: dict) -> dict:
    """The config the fingerprints see: every added key left out while at its default (a copy)."""
    return _prune(config, schema.load_schema(), TOP)


def _prune(value, spec: dict, path: str):
    if isinstance(value, dict) and "properties" in spec:
        kept = {}
        for key, item in value.items():
            sub = spec["properties"].get(key)
            if sub is None:  # a free-form key (optimizer.init_args.eps), not the schema's
                kept[key] = item
                continue
            if new_section(path, key):
                kept[key] = item  # a section added with its stage: no folder of it was pinned, it counts whole
                continue
            item = _prune(item, sub, join(path, key))
            if join(path, key) in pinned_keys() or "default" not in sub or item != _default(sub, join(path, key)):
                kept[key] = item
        return kept
    if isinstance(value, list) and isinstance(spec.get("items"), dict):
        return [_prune(item, spec["items"], path + ITEMS) for item in value]
    return value


def _default(spec: dict, path: str):
    """A key's default as the pinned view holds it."""
    return _prune(_filled(spec), spec, path)


def added(section: dict, path: str) -> dict:
    """The added keys a section of the pinned view holds (those set away from their default); at the top
    level, a new stage's section is that stage's, not an added key."""
    return {key: section[key] for key in section if join(path, key) not in pinned_keys() and not new_section(path, key)}


def with_added_defaults(section: dict, path: str) -> dict:
    """A stage's settings as its command needs them: every added key the fingerprint left out at its
    default filled back in, at any depth of the section at `path` (a copy)."""
    return _fill(section, _spec_at(path), path)


def _fill(section: dict, spec: dict, path: str) -> dict:
    filled = dict(section)
    for key, sub in spec.get("properties", {}).items():
        if new_section(path, key):
            continue  # a section added with its stage: that stage's settings, not pretrain's top-level keys
        if key not in filled and join(path, key) not in pinned_keys() and "default" in sub:
            filled[key] = _filled(sub)
        elif isinstance(filled.get(key), dict):
            filled[key] = _fill(filled[key], sub, join(path, key))
    return filled


def _filled(spec: dict):
    """A key's default as the config holds it after validation: an object's own defaults filled in."""
    value = copy.deepcopy(spec["default"])
    for _ in schema.DefaultsValidator(spec).iter_errors(value):  # the filling happens while it validates
        pass
    return value


def _spec_at(path: str) -> dict:
    spec = schema.load_schema()
    for part in filter(None, path.replace(ITEMS, "." + ITEMS).split(".")):
        spec = spec["items"] if part == ITEMS else spec["properties"][part]
    return spec
