"""Push DVC's run-cache so that another machine can restore any stage that ran here.

    python scripts/push_run_cache.py [--remote NAME] [--jobs N]    # after `dvc push`

`dvc push --run-cache` (DVC 3.x) uploads the run entries (`.dvc/cache/runs/...`) and the
workspace's cached outs, but not the objects of the `cache: false` outs that a run entry names:
DVC saves those (our git-tracked metrics, curves and report figures) into the local cache when
it records a run, and restores them from there [D17]. Without them on the remote, the other
machine finds the entry, misses an object, and runs the stage. This script pushes the entries,
then every object they name (DVC's own `stage_cache.get_used_objs` and `cloud.push`): a few
small JSON/TSV/SVG files per run, plus the cached outs of runs that are not in the workspace
(experiments). Credentials come from the environment, as for `dvc push`; nothing is printed
but counts.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("push_run_cache")


def push_run_cache(remote: str | None = None, jobs: int | None = None, root: str = ".") -> tuple[int, int]:
    """(run entries pushed, objects pushed); raises RuntimeError when an object failed."""
    from dvc.repo import Repo

    with Repo(root) as repo:
        entries = repo.stage_cache.push(remote)  # every local entry: (stage key, run hash)
        pushed = failed = 0
        for odb, objs in repo.stage_cache.get_used_objs(entries).items():
            result = repo.cloud.push(objs, jobs=jobs, remote=remote, odb=odb)
            pushed += len(result.transferred)
            failed += len(result.failed)
    if failed:
        raise RuntimeError(f"{failed} object(s) of the run-cache failed to upload (see the warnings above)")
    return len(entries), pushed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--remote", "-r", default=None, help="DVC remote (default: core.remote)")
    ap.add_argument("--jobs", "-j", type=int, default=None)
    args = ap.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("push_run_cache: %(message)s"))
    log.addHandler(handler)  # this script's lines only; boto and DVC keep their own levels
    log.setLevel(logging.INFO)
    try:
        entries, objects = push_run_cache(args.remote, args.jobs)
    except Exception as e:  # DVC's errors (no remote, auth, network) end here: one line, exit 1
        log.error("error: %s", " ".join(str(e).split()) or type(e).__name__)  # DVC's message, on one line
        return 1
    log.info("%d run entries, %d new objects pushed", entries, objects)
    return 0


if __name__ == "__main__":
    sys.exit(main())
