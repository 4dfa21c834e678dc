"""Stage `eval@V`: one sampled response per held-out test task, scored, for model version V.

    dvc repro eval@sft
    python stages/eval.py --version sft --model models/merged/sft

Generates with seeded sampling (one seed per task, so any row can be regenerated alone) through
`eval.backend`: `hf` in this process, `vllm` in-process on CUDA, or `openai`: one request per task
to a server started on the model folder (`vllm serve models/merged/V`, params `eval.server`; it
must list that folder's name in `/models`; DVC tracks the folder, not what the server loaded).
Then it parses every response (`bioreasoner.core.parsing`), asks each configured judge for a
verdict (the first one is primary; `judges.max_concurrency` requests in flight), applies the one
pass rule (`judges.pass_rule`, the rule the filter applies) combined over the panel by
`judges.verdict` (`bioreasoner.scoring.tribunal`), and writes one readable row per task to
`data/eval/V.jsonl` and the
aggregate metrics (defined in README and `bioreasoner.scoring.eval_metrics`) to
`metrics/eval/V.json`.

Params are validated before anything is loaded. An empty or missing test-tasks file, a
repeated task id or an empty corpus is one error line and exit 1, as is a judge that fails on
too many of the first items (`judges.fail_fast_after`, `judges.max_error_rate`); nothing is
written then.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from typing import Any

from bioreasoner.core import config
from bioreasoner.core.io import (
    BadInputError,
    iter_jsonl,
    read_jsonl,
    require_nonempty,
    run_stage,
    unique_ids,
    write_json,
    write_jsonl,
)
from bioreasoner.core.parsing import parse_response
from bioreasoner.core.records import Paper, Task
from bioreasoner.reporting.lineage import version_metrics
from bioreasoner.scoring.eval_metrics import aggregate, score_response
from bioreasoner.scoring.filtering import pass_calls
from bioreasoner.scoring.judge import agreement, build_judges, score_all
from bioreasoner.scoring.tribunal import agreement_report, tribunal_reasons

log = logging.getLogger("eval")

SECTIONS = ("seed", "model", "judges", "eval", "report")  # dvc.yaml's `params:` for eval@V


def select(tasks: list[Task], per_type: int) -> list[Task]:
    """The first `per_type` tasks of each type, in file order (0 = all): a stratified subset."""
    if per_type <= 0:
        return tasks
    seen: dict[str, int] = defaultdict(int)
    out = []
    for t in tasks:
        seen[t.type] += 1
        if seen[t.type] <= per_type:
            out.append(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--version", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", default="data/tasks/test.jsonl")
    ap.add_argument("--corpus", default="data/corpus.jsonl")
    ap.add_argument("--out", default=None, help="default data/eval/<version>.jsonl")
    ap.add_argument("--metrics", default=None, help="default metrics/eval/<version>.json")
    args = ap.parse_args()
    out = args.out or f"data/eval/{args.version}.jsonl"
    metrics_path = args.metrics or f"metrics/eval/{args.version}.json"

    # -- params
    p = config.load(args.params, sections=SECTIONS)
    rule = p.judges.pass_rule
    judges = build_judges(p.judges.panel, retry_budget=p.judges.retry_budget)

    # -- data
    all_tasks = require_nonempty(args.tasks, read_jsonl(args.tasks, Task), "test tasks")
    unique_ids(args.tasks, all_tasks, lambda t: t.id)
    tasks = select(all_tasks, p.eval.max_tasks_per_type)
    corpus_pmids = {paper.pmid for paper in iter_jsonl(args.corpus, Paper)}
    if not corpus_pmids:
        raise BadInputError(args.corpus, None, "no papers: the file is empty")
    log.info("%s: %d test tasks, judges %s", args.version, len(tasks), [j.name for j in judges])

    # -- model: torch and transformers load only now, so bad params or data fail in a second
    import torch

    from bioreasoner.endpoints.completions import ServedSampler
    from bioreasoner.modeling.generation import (
        SamplingParams,
        check_backend,
        item_seed,
        render_prompt,
        sample,
        sample_vllm,
    )
    from bioreasoner.modeling.models import load_model, load_tokenizer
    from bioreasoner.training.data import prompt_messages

    gen = SamplingParams(**p.eval.generation.model_dump())
    check_backend(p.eval.backend)
    torch.manual_seed(p.seed)
    seeds = [item_seed(p.seed, "eval", t.id) for t in tasks]
    trust = p.model.trust_remote_code
    tokenizer = load_tokenizer(args.model, trust_remote_code=trust)  # every backend renders prompts here
    prompts = [prompt_messages(t) for t in tasks]
    desc = f"eval {args.version}"

    # -- generate (in this process, in vLLM's, or on a server started on --model) and score
    if p.eval.backend == "openai":
        sampler = ServedSampler(p.eval.server, model=args.model, name=desc)
        sampler.check_model()  # a server left on another version is refused here
        rendered = [render_prompt(tokenizer, m, gen.prefix) for m in prompts]
        responses = sampler.sample(rendered, seeds, gen, keys=[t.id for t in tasks], desc=desc)
    elif p.eval.backend == "vllm":
        responses = sample_vllm(args.model, [render_prompt(tokenizer, m, gen.prefix) for m in prompts], seeds, gen)
    else:
        model = load_model(args.model, trust_remote_code=trust, dtype=p.model.dtype)
        if torch.cuda.is_available():
            model.to("cuda")
        responses = sample(model, tokenizer, prompts, seeds, gen, desc=desc)
    verdicts = score_all(
        judges,
        tasks,
        responses,
        fail_fast_after=p.judges.fail_fast_after,
        max_error_rate=p.judges.max_error_rate,
        max_concurrency=p.judges.max_concurrency,
    )
    parsed = [parse_response(r) for r in responses]
    sources = [t.source_pmids for t in tasks]
    rows: list[dict[str, Any]] = []
    for i, (task, response) in enumerate(zip(tasks, responses, strict=True)):
        row = score_response(task, response, corpus_pmids, verdicts[0][i], rule)
        row["seed"] = seeds[i]
        if p.judges.verdict != "primary":  # the tribunal's call replaces the primary judge's
            row["reasons"] = tribunal_reasons(parsed[i], sources[i], [v[i] for v in verdicts], rule, p.judges.verdict)
            row["passed"] = not row["reasons"]
        if len(judges) > 1:
            row["judges"] = {
                j.name: {"logic": v[i].logic, "novelty": v[i].novelty, "error": v[i].error}
                for j, v in zip(judges, verdicts, strict=True)
            }
        rows.append(row)

    # -- write rows and metrics
    write_jsonl(out, rows)
    metrics: dict[str, Any] = {"version": args.version, **aggregate(rows)}
    # each judge's own pass/fail (the same rule, that judge's verdicts) against the primary's
    calls = [pass_calls(parsed, sources, v, rule) for v in verdicts]
    for j, other in zip(judges[1:], calls[1:], strict=True):
        metrics.setdefault("judge_agreement", {})[j.name] = agreement(calls[0], other)
    if len(judges) > 1:
        metrics["tribunal"] = agreement_report([j.name for j in judges], calls, p.judges.verdict)
    # every rate, ratio and mean with its interval (Wilson / bootstrap), as metrics/lineage.json has it
    metrics["intervals"] = {
        name: {"lo": m["lo"], "hi": m["hi"], "n": m["n"]}
        for name, m in version_metrics(rows, p.report.n_boot, p.seed, p.report.alpha, args.version).items()
    }
    write_json(metrics_path, metrics)
    log.info(
        "%s: hallucination %.3f, missing think %.3f, pass %.3f, PubMedQA acc %s",
        args.version,
        metrics["hallucination_rate"],
        metrics["missing_think_rate"],
        metrics["pass_rate"],
        metrics["pubmedqa_accuracy"],
    )


if __name__ == "__main__":
    run_stage(main)
