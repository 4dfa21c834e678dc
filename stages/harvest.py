"""Stage `harvest`: read every source in `harvest.sources`, deduplicate, write the corpus.

    dvc repro harvest
    python stages/harvest.py --corpus data/corpus.jsonl --metrics metrics/harvest.json

Sources are mappings with a `kind` (pubmedqa, pubmed_xml, openalex_json, pubmed_api,
openalex_api) and, for files, a `path` glob. Papers without abstract (and OpenAlex works
without PMID) are normal in real data: dropped and counted. Malformed records stop the
stage unless `harvest.on_bad_record: skip`.
"""

from __future__ import annotations

import argparse
import logging

from tqdm import tqdm

from bioreasoner.core import config
from bioreasoner.core.io import BadInputError, run_stage, write_json, write_jsonl
from bioreasoner.core.records import Paper
from bioreasoner.harvest import reader
from bioreasoner.harvest.dedupe import dedupe
from bioreasoner.harvest.ledger import Ledger

log = logging.getLogger("harvest")
SECTIONS = ("harvest",)  # the params this stage declares in dvc.yaml
USUAL_DROPS = ("duplicate", "malformed", "no_abstract", "no_pmid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--corpus", default="data/corpus.jsonl")
    ap.add_argument("--metrics", default="metrics/harvest.json")
    args = ap.parse_args()

    # -- params
    cfg = config.load(args.params, sections=SECTIONS).harvest  # kinds and options validated here

    # -- read every source
    papers: list[Paper] = []
    by_source: dict[str, dict] = {}
    total = Ledger(cfg.on_bad_record)
    for i, source in enumerate(cfg.sources):
        kind, spec = source.kind, source.model_dump()
        ledger = Ledger(total.on_bad_record)
        # disable=None: bars on a terminal, none in captured logs (CI)
        got = list(tqdm(reader(kind)(spec, ledger), desc=f"harvest {kind}", unit="paper", disable=None))
        if not got:
            where = spec.get("path") or spec.get("query") or spec.get("search") or kind
            raise BadInputError(where, f"harvest.sources[{i}]", f"source '{kind}' yielded no usable records")
        papers += got
        total.records_in += ledger.records_in
        total.dropped.update(ledger.dropped)
        by_source[f"{i}:{kind}"] = {
            "records_in": ledger.records_in,
            "usable": len(got),
            "dropped": dict(ledger.dropped),
        }
        log.info("%s: %d records in, %d usable, dropped %s", kind, ledger.records_in, len(got), dict(ledger.dropped))

    # -- dedupe by PMID then DOI
    corpus, duplicates = dedupe(papers)
    # The usual reasons always appear (at 0) so `dvc metrics show` columns stay stable.
    dropped = dict.fromkeys(USUAL_DROPS, 0) | dict(total.dropped) | {"duplicate": duplicates}

    # -- write corpus and metrics
    write_jsonl(args.corpus, corpus)
    write_json(
        args.metrics,
        {
            "records_in": total.records_in,
            "kept": len(corpus),
            "dropped": {k: dropped[k] for k in sorted(dropped)},
            "with_abstract_share": round(1 - dropped["no_abstract"] / total.records_in, 4),
            "with_mesh_share": round(sum(bool(p.mesh) for p in corpus) / len(corpus), 4),
            "by_source": by_source,
        },
    )
    log.info("corpus: %d papers -> %s", len(corpus), args.corpus)


if __name__ == "__main__":
    run_stage(main)
