"""Apply a params preset: deep-merge `presets/<name>.yaml` into params.yaml, comments kept.

    make preset PRESET=qwen2.5-7b-qlora
    python scripts/apply_preset.py presets/qwen2.5-7b-qlora.yaml            # writes params.yaml
    python scripts/apply_preset.py presets/qwen2.5-7b-qlora.yaml --check    # validate only, write nothing

A preset is a partial params file: mappings merge key by key, anything else (a scalar, a list
such as `judges.panel`) replaces the value it names. The merged params are validated by the
typed params (`bioreasoner.core.config`: unknown keys, wrong types, ranges, the lineage rules)
before anything is written; a problem is one line naming the preset and the key, exit 1, and
params.yaml is untouched. The write is atomic (a temp file renamed over params.yaml).

Comments: params.yaml is edited in place with ruamel.yaml's round trip, so its comments stay;
a value the preset changes takes the preset's end-of-line comment (the reason for the new value)
instead of the old one, which explained the old value. Keys the preset adds come with theirs.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from bioreasoner.core import config
from bioreasoner.core.io import BadInputError, atomic_path

ROOT = Path(__file__).resolve().parents[1]


def yaml_rt() -> YAML:
    y = YAML()  # round trip: comments, key order, flow style and number formats survive
    y.width = 4096  # never re-wrap a long line
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def read(path: Path) -> Any:
    try:
        data = yaml_rt().load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(path, None, "file does not exist") from None
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise BadInputError(path, f"line {mark.line + 1}" if mark else None, "malformed YAML") from None
    if not isinstance(data, Mapping):
        raise BadInputError(path, None, "must be a YAML mapping of params sections")
    return data


def _eol_comment(node: Any, key: Any) -> str | None:
    """The first line of the end-of-line comment after `key: value` in a round-trip mapping."""
    entry = getattr(node, "ca", None) and node.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None:
        return None
    first = token.value.split("\n", 1)[0].strip()
    return first[1:].strip() if first.startswith("#") else None


def _tail(node: Any, key: Any) -> str:
    """Comment lines after `key`'s end-of-line comment (ruamel keeps the comment block before the
    next section there); removed from the token and returned."""
    entry = node.ca.items.get(key) if isinstance(node, CommentedMap) else None
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None:
        return ""
    first, sep, rest = token.value.partition("\n")
    token.value = first + sep
    return rest


def _set_eol_comment(node: CommentedMap, key: Any, comment: str | None, tail: str = "") -> None:
    """Replace the end-of-line comment of `key`, then the `tail` lines after it."""
    node.ca.items.pop(key, None)
    if comment or tail:
        node.yaml_add_eol_comment(f"# {comment}" if comment else "#", key)
        token = node.ca.items[key][2]
        token.value = (token.value.rstrip("\n") if comment else "") + "\n" + tail


def _last(node: Any) -> tuple[Any, Any]:
    """The mapping and key that end `node`'s block (where a trailing comment block attaches)."""
    key = list(node)[-1]
    value = node[key]
    if isinstance(value, CommentedMap) and len(value) and value.fa.flow_style() is False:
        return _last(value)
    return node, key


def merge(target: CommentedMap, preset: Mapping[str, Any]) -> None:
    """Deep-merge `preset` into `target` in place (mappings by key; anything else replaces).

    Keys new to `target` go in before its last key, so the comment block that ends the section
    (kept by ruamel after the last key) stays at the end."""
    for key, value in preset.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
            merge(target[key], value)
            continue
        if key in target and _plain(target[key]) == _plain(value):
            continue
        comment = _eol_comment(preset, key)
        if key not in target:
            target.insert(max(len(target) - 1, 0), key, value)
            _set_eol_comment(target, key, comment)
            continue
        tail = _tail(target, key)
        target[key] = value
        if isinstance(value, CommentedMap) and len(value) and value.fa.flow_style() is False:
            _set_eol_comment(target, key, comment)  # a block mapping: its tail goes after its last key
            inner, last = _last(value)
            _set_eol_comment(inner, last, _eol_comment(inner, last), tail)
        else:
            _set_eol_comment(target, key, comment, tail)


def _plain(data: Any) -> Any:
    """Round-trip YAML nodes as plain JSON-able Python (what the typed params validate)."""
    return json.loads(json.dumps(data, default=str))


def apply(preset_path: Path, params_path: Path, *, check: bool = False) -> str:
    """The merged params text (validated); written atomically to `params_path` unless `check`."""
    params = read(params_path)
    preset = read(preset_path)
    merge(params, preset)
    try:
        config.validate(_plain(params), preset_path)
    except BadInputError as err:  # name the preset: that is where the bad value came from
        raise BadInputError(preset_path, err.where, f"{err.problem} (after merging into {params_path})") from None
    buf = io.StringIO()
    yaml_rt().dump(params, buf)
    text = buf.getvalue()
    if not check:
        with atomic_path(params_path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", type=Path, help="a preset file, e.g. presets/qwen2.5-7b-qlora.yaml")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--check", action="store_true", help="validate the merged params, write nothing")
    args = ap.parse_args(argv)
    try:
        text = apply(args.preset, args.params, check=args.check)
    except BadInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    merged = config.validate(_plain(yaml_rt().load(text)), args.params)
    print(f"{'valid' if args.check else 'applied'}: {args.preset} -> {args.params}")
    if all(not v.parent.startswith("models/pretrained") for v in merged.merge.versions.values()) and all(
        not m.startswith("models/pretrained") for m in merged.eval.models.values()
    ):
        print("next: `dvc freeze pretrain` (nothing reads models/pretrained now; README, GPU preset)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
