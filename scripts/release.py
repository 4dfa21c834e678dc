"""Release a model version as a GTO registration tag: `make release VERSION=v3.0`.

    python scripts/release.py v3.0              # check, commit pipeline files, push to the DVC remote, tag
    python scripts/release.py v3.0 --dry-run    # run every check, change nothing
    gto show bioreasoner                        # the released versions

Naming. VERSION is `vX.Y` or `vX.Y.Z`. GTO needs SemVer, so the tag is `<artifact>@vX.Y.Z` with the
patch defaulting to 0: `v3.0` -> `bioreasoner@v3.0.0`. The pipeline's version key (params.yaml
`merge.versions` / `eval.models`) joins the numbers with underscores and leaves out a zero patch:
`v3.0` and `v3.0.0` -> `v3_0`, `v3.0.1` -> `v3_0_1`. The key names the model, `models/merged/<key>`
(a DVC output in dvc.lock), and its eval metrics, `metrics/eval/<key>.json`.

Refusals (exit 1, one line on stderr), checked in this order before anything changes:
  * the tag already exists;
  * the git tree has changes (`git status --porcelain`, untracked files included) outside the files
    the pipeline writes: dvc.lock, metrics/**, dvclive/**, reports/** and the .gitignore files DVC keeps beside
    the outputs named in dvc.lock;
  * `dvc status --json` reports any stage as changed (so those pipeline files match dvc.lock);
  * the model is not an output in dvc.lock, or its metrics file is missing or not JSON;
  * HEAD already carries a version of the artifact and there is nothing to commit (GTO allows one
    version per commit).

Then: changed pipeline files are committed ("release <tag>: dvc.lock and metrics"); if `dvc remote list`
names a remote, `dvc push` runs (before tagging, so a tag never names data missing from the remote);
finally the annotated tag is created with `gto register`, its message holding the eval metrics. Git
is never pushed: `git push origin <tag>` publishes the release. Remote URLs are never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger("release")

ARTIFACT = "bioreasoner"
MODEL_DIR = "models/merged"
METRICS_DIR = "metrics/eval"
# Git-tracked files the pipeline writes; a release may commit them (dvc status vouches for them).
PIPELINE_FILES = ("dvc.lock",)
PIPELINE_DIRS = ("metrics/", "dvclive/", "reports/")  # reports/: the `report` stage's figures
CREDENTIALS_RE = re.compile(r"(\w+://)[^/@\s]+@")  # user:password@ in a URL
DVC_BANNER = "Having any troubles?"  # the support line dvc prints after its error, never the error itself
VERSION_RE = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?$")


class Refused(Exception):
    """A check failed; the message is the one line shown to the user."""


@dataclass(frozen=True)
class Version:
    semver: str  # v3.0.0: GTO's version
    key: str  # v3_0: the params.yaml / metrics key

    @property
    def model(self) -> str:
        return f"{MODEL_DIR}/{self.key}"

    @property
    def metrics(self) -> str:
        return f"{METRICS_DIR}/{self.key}.json"


def parse_version(text: str) -> Version:
    """`v3.0` -> (v3.0.0, v3_0); `v3.0.1` -> (v3.0.1, v3_0_1)."""
    m = VERSION_RE.match(text.strip())
    if not m:
        raise Refused(f"VERSION must look like v3.0 or v3.0.1, got {text!r}")
    major, minor, patch = m.group(1), m.group(2), m.group(3) or "0"
    key = f"v{major}_{minor}" + (f"_{patch}" if patch != "0" else "")
    return Version(semver=f"v{major}.{minor}.{patch}", key=key)


def tool(name: str) -> str:
    """The environment's `dvc`/`gto` (next to this python), else the one on PATH."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise Refused(f"`{name}` not found next to {sys.executable} or on PATH")
    return found


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and DVC_BANNER not in ln]
        lines = lines or [ln for ln in proc.stdout.splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        last = CREDENTIALS_RE.sub(r"\1***@", last)  # tool errors may quote a remote's URL
        raise Refused(f"`{Path(cmd[0]).name} {' '.join(cmd[1:2])}` failed: {last}")
    return proc


def dirty_paths() -> list[str]:
    """Paths `git status --porcelain` lists (both sides of a rename), untracked files one by one."""
    out = run("git", "status", "--porcelain", "--untracked-files=all", "-z").stdout
    entries = out.split("\0")
    paths, i = [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if not entry:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":  # -z puts a rename's source in the next field
            paths.append(entries[i])
            i += 1
    return paths


def lock_outs(lock: Path) -> dict[str, str]:
    """Output path -> md5 for every stage in dvc.lock."""
    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    return {
        o["path"]: str(o.get("md5", "?"))
        for stage in (data.get("stages") or {}).values()
        for o in stage.get("outs") or []
    }


def is_pipeline_file(path: str, out_dirs: set[str]) -> bool:
    if path in PIPELINE_FILES or path.startswith(PIPELINE_DIRS):
        return True
    p = Path(path)
    return p.name == ".gitignore" and p.parent.as_posix() in out_dirs


def tag_message(tag: str, version: Version, model_md5: str, metrics: dict) -> str:
    return "\n".join(
        [
            f"{tag}: eval metrics of {version.model} (md5 {model_md5})",
            "",
            f"{version.metrics}:",
            json.dumps(metrics, indent=2, sort_keys=True),
        ]
    )


def release(version_text: str, artifact: str, dry_run: bool) -> str:
    version = parse_version(version_text)
    tag = f"{artifact}@{version.semver}"
    root = Path(run("git", "rev-parse", "--show-toplevel").stdout.strip())
    if Path.cwd().resolve() != root.resolve():
        raise Refused(f"run from the repository root ({root})")

    if run("git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}", check=False).returncode == 0:
        raise Refused(f"tag {tag} already exists")

    outs = lock_outs(Path("dvc.lock"))
    out_dirs = {Path(p).parent.as_posix() for p in outs}
    dirty = dirty_paths()
    other = [p for p in dirty if not is_pipeline_file(p, out_dirs)]
    if other:
        shown = ", ".join(other[:3]) + (f" (+{len(other) - 3} more)" if len(other) > 3 else "")
        raise Refused(
            "git tree is dirty outside the pipeline files (dvc.lock, metrics/, dvclive/, reports/): "
            f"{shown}; commit or stash"
        )

    status = run(tool("dvc"), "status", "--json").stdout.strip()
    changed = json.loads(status or "{}")
    if changed:
        raise Refused(f"pipeline changed per `dvc status`: {', '.join(sorted(changed))}; run `dvc repro` first")

    if version.model not in outs:
        raise Refused(f"{version.model} is not a pipeline output in dvc.lock (merge.versions.{version.key} in params)")
    metrics_path = Path(version.metrics)
    if not metrics_path.is_file():
        raise Refused(f"{version.metrics} not found; add eval.models.{version.key} and run `dvc repro`")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as e:
        raise Refused(f"{version.metrics} is not JSON: {e}") from e

    head_tags = run("git", "tag", "--points-at", "HEAD").stdout.split()
    registered = [t for t in head_tags if t.startswith(f"{artifact}@v") and not t.endswith("!")]
    if registered and not dirty:
        raise Refused(f"HEAD is already released as {registered[0]}; GTO allows one version per commit")

    if dry_run:
        log.info("dry run: would commit %d pipeline file(s) and create %s", len(dirty), tag)
        return tag

    if dirty:
        run("git", "add", "-A", "--", *dirty)
        run("git", "commit", "-q", "-m", f"release {tag}: dvc.lock and metrics")
        log.info(
            "committed %d pipeline file(s) as %s", len(dirty), run("git", "rev-parse", "--short", "HEAD").stdout.strip()
        )

    remotes = [line.split()[0] for line in run(tool("dvc"), "remote", "list").stdout.splitlines() if line.strip()]
    if remotes:
        log.info("pushing to the DVC remote (configured: %s)", ", ".join(remotes))
        pushed = run(tool("dvc"), "push").stdout.strip().splitlines()
        log.info("dvc push: %s", pushed[-1] if pushed else "done")
    else:
        log.info("no DVC remote configured; skipping dvc push")

    message = tag_message(tag, version, outs[version.model], metrics)
    run(tool("gto"), "register", artifact, "HEAD", "--version", version.semver, "--message", message)
    log.info("created annotated tag %s; publish it with `git push origin %s`", tag, tag)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", help="vX.Y or vX.Y.Z, e.g. v3.0 (tag bioreasoner@v3.0.0, key v3_0)")
    parser.add_argument("--artifact", default=ARTIFACT, help="GTO artifact name (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="run the checks only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="release: %(message)s")
    try:
        release(args.version, args.artifact, args.dry_run)
    except Refused as e:
        log.error("refused: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
