"""Stage `build_triplets`: turn the corpus into train/test tasks with reference responses.

    dvc repro build_triplets
    python stages/build_triplets.py --corpus data/corpus.jsonl --out-dir data/tasks

Task types: `qa` (one PubMedQA paper, gold yes/no/maybe) and the notebook's cross-paper
types `critique_extend`, `method_bridge`, `gap_analysis` over three papers grouped by MeSH
overlap. The split is by paper: test papers (the official PubMedQA test PMIDs) appear only
in test tasks. Same params, byte-identical outputs.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from bioreasoner.core import config
from bioreasoner.core.io import read_jsonl, run_stage, write_json, write_jsonl
from bioreasoner.core.records import Paper, Source, Task
from bioreasoner.core.safety import neutralise_paper
from bioreasoner.tasks.excerpt import excerpt
from bioreasoner.tasks.grouping import group_by_mesh
from bioreasoner.tasks.prompts import INSTRUCTIONS, cross_messages, qa_messages
from bioreasoner.tasks.split import assert_no_leakage, read_test_pmids
from bioreasoner.tasks.teacher import cross_reference, qa_reference, reference_problems

log = logging.getLogger("build_triplets")
SECTIONS = ("seed", "split", "build_triplets")  # the params this stage declares in dvc.yaml
CROSS_TYPES = tuple(INSTRUCTIONS)


def make_tasks(papers: list[Paper], cfg: dict, seed: int) -> list[Task]:
    """All tasks over one pool of papers (the train pool or the test pool)."""
    # Corpus text is data, never markup: chat tokens, think tags and PMID-like strings are
    # neutralised here, once, before any of it becomes a Source, a prompt or a reference.
    papers = [neutralise_paper(p) for p in papers]
    min_think, budget = cfg["min_think_chars"], cfg["max_source_chars"]
    shown = {p.pmid: excerpt(p, budget) for p in papers}
    sources = {p.pmid: Source(pmid=p.pmid, title=p.title, text=shown[p.pmid].text) for p in papers}

    tasks = []
    for p in papers:
        if p.question and p.decision:
            tasks.append(
                Task(
                    id=f"qa-{p.pmid}",
                    type="qa",
                    sources=[sources[p.pmid]],
                    gold=p.decision,
                    messages=qa_messages(sources[p.pmid], p.question),
                    reference=qa_reference(p.pmid, shown[p.pmid], p.question, p.long_answer, p.decision, min_think),
                )
            )
    g = cfg["grouping"]
    groups = group_by_mesh(
        [(p.pmid, p.mesh) for p in papers],
        max_df_fraction=g["max_df_fraction"],
        max_df_cap=g["max_df_cap"],
        max_uses=g["max_uses_per_paper"],
        seed=seed,
        max_groups=cfg["max_groups_per_type"] * len(CROSS_TYPES),
    )
    for i, group in enumerate(groups):
        ttype = CROSS_TYPES[i % len(CROSS_TYPES)]
        srcs = [sources[pmid] for pmid in group.pmids]
        reference = cross_reference(ttype, group.pmids, [shown[p] for p in group.pmids], group.shared, min_think)
        tasks.append(
            Task(
                id=f"{ttype}-{'-'.join(group.pmids)}",
                type=ttype,
                sources=srcs,
                messages=cross_messages(ttype, srcs),
                reference=reference,
                shared_mesh=list(group.shared),
            )
        )
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--corpus", default="data/corpus.jsonl")
    ap.add_argument("--out-dir", default="data/tasks")
    ap.add_argument("--metrics", default="metrics/tasks.json")
    args = ap.parse_args()

    # -- params
    p = config.load(args.params, sections=SECTIONS)
    cfg, seed = p.build_triplets.model_dump(), p.seed

    # -- load data and split by paper
    corpus = read_jsonl(args.corpus, Paper)
    test_pmids = read_test_pmids(p.split.test_pmids)
    train_papers = [p for p in corpus if p.pmid not in test_pmids]
    test_papers = [p for p in corpus if p.pmid in test_pmids]
    log.info("%d papers: %d train, %d test", len(corpus), len(train_papers), len(test_papers))

    # -- build tasks per pool; the split holds by construction, and we check it anyway
    train, test = make_tasks(train_papers, cfg, seed), make_tasks(test_papers, cfg, seed)
    assert_no_leakage(train, test_pmids)
    broken = {}  # the teacher's contract, read by the filter's parser: never stripped by -O
    for t in train + test:
        if problems := reference_problems(t.reference, t.source_pmids, cfg["min_think_chars"]):
            broken[t.id] = problems
    if broken:
        raise AssertionError(f"teacher broke its contract in {len(broken)} task(s): {list(broken.items())[:3]}")

    # -- write tasks and counts
    out = Path(args.out_dir)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    counts = {
        name: dict(sorted(Counter(t.type for t in ts).items())) | {"total": len(ts)}
        for name, ts in (("train", train), ("test", test))
    }
    write_json(args.metrics, {"papers": {"train": len(train_papers), "test": len(test_papers)}, "tasks": counts})
    log.info("tasks: %s", counts)


if __name__ == "__main__":
    run_stage(main)
