"""Reading inputs and writing outputs: one place for the rules every stage follows.

- Bad input raises `BadInputError`, whose message names the file, the record and the
  problem on one line; `run_stage` turns it into that line on stderr and exit code 1.
- Outputs are written to a temp file beside the target and renamed into place, so a
  failed stage never leaves a half-written out.
- JSON is written deterministically (fixed key order, UTF-8, "\n" line ends) so data
  stages are byte-for-byte reproducible.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class BadInputError(Exception):
    """Input that the pipeline refuses: the message is the one line the user sees."""

    def __init__(self, path: str | Path, where: str | None, problem: str):
        self.path, self.where, self.problem = str(path), where, problem
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_stage(main: Callable[[], None]) -> None:
    """Entry point wrapper: bad input is one clear line and a non-zero exit, no traceback."""
    setup_logging()
    try:
        main()
    except BadInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


# ----------------------------------------------------------------------------- params


def load_yaml(path: str | Path) -> Any:
    """A YAML file; malformed YAML is one line naming the file and the line."""
    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        raise BadInputError(path, where, f"malformed YAML: {getattr(err, 'problem', None) or err}") from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The raw params mapping (stages use `bioreasoner.core.config.load`, which validates it)."""
    return load_yaml(path) or {}


# ----------------------------------------------------------------------------- reading


def read_text(path: str | Path) -> str:
    """Read a UTF-8 file; bad bytes are reported with their line number."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, None, "file does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BadInputError(path, f"line {line}", f"not valid UTF-8 (byte 0x{data[err.start]:02x})") from None


def read_json(path: str | Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInputError(path, f"line {err.lineno}", f"malformed JSON: {err.msg}") from None


def validation_problem(err: ValidationError) -> str:
    """The first pydantic error as 'field: message'."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "record"
    return f"field '{loc}': {first['msg']}"


def parse_record(model: type[M], obj: Any, path: str | Path, where: str) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as err:
        raise BadInputError(path, where, validation_problem(err)) from None


def iter_jsonl(path: str | Path, model: type[M]) -> Iterator[M]:
    """Yield validated records from a JSONL file; blank lines are skipped."""
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadInputError(path, f"line {lineno}", f"malformed JSON: {err.msg}") from None
        yield parse_record(model, obj, path, f"line {lineno}")


def read_jsonl(path: str | Path, model: type[M]) -> list[M]:
    return list(iter_jsonl(path, model))


# ----------------------------------------------------------------------------- writing


def dumps(obj: Any) -> str:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, ensure_ascii=False)


def sweep_temps(path: str | Path) -> list[Path]:
    """Remove temp files/folders that an earlier, killed `atomic_path` left beside `path`.

    A kill -9 skips the cleanup below, and a 7B merge's temp folder is ~15 GB; the next
    write of the same out sweeps it. Only names of our own shape are touched: the out's
    name between a leading dot and mkstemp's 8 random characters (plus `.tmp` for files).
    """
    path = Path(path)
    shape = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}(\.tmp)?$")
    swept = []
    if path.parent.is_dir():
        for stale in path.parent.iterdir():
            if shape.match(stale.name):
                log.warning("removing a temp left by an interrupted run: %s", stale)
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
                swept.append(stale)
    return swept


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds.

    Temps of an earlier killed run of the same out are swept first (`sweep_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(path)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create private (0600/0700) paths; outs get the usual umask modes.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod((0o777 if directory else 0o666) & ~umask)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(dumps(rec) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")


# ----------------------------------------------------------------------------- degenerate inputs

K = TypeVar("K", bound=Hashable)


def require_nonempty(path: str | Path, rows: list[M], what: str = "records") -> list[M]:
    """`rows` read from `path`, or a `BadInputError` when there are none (an empty file is a
    broken upstream stage, not a valid input)."""
    if not rows:
        raise BadInputError(path, None, f"no {what}: the file is empty")
    return rows


def unique_ids(path: str | Path, rows: Iterable[M], key: Callable[[M], K], what: str = "id") -> dict[K, M]:
    """`{key(row): row}` in file order; a repeated key is a `BadInputError` naming both records
    (1-based, blank lines not counted)."""
    seen: dict[K, M] = {}
    first: dict[K, int] = {}
    for n, row in enumerate(rows, start=1):
        k = key(row)
        if k in seen:
            raise BadInputError(path, f"record {n}", f"duplicate {what} {k!r} (first at record {first[k]})")
        seen[k], first[k] = row, n
    return seen
