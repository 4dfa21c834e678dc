"""Group papers into triples by MeSH overlap, in near-linear time.

An inverted index maps each informative MeSH term to the papers carrying it. A term is
informative when at least two papers share it and it is not ubiquitous: check tags such
as "Humans" or "Female" (on 80-96% of PubMedQA papers) would link everything to
everything and make the candidate scan quadratic, so terms above `max_df` are ignored.
Each anchor then scores only the papers in its terms' posting lists (idf-weighted), so
the work is O(papers x terms per paper x max_df), never the O(n^3) of all triples.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    pmids: tuple[str, str, str]  # anchor first, then partners by falling overlap
    shared: tuple[str, ...]  # informative MeSH terms the anchor shares with a partner


def group_by_mesh(
    papers: Sequence[tuple[str, Sequence[str]]],
    *,
    max_df_fraction: float,
    max_df_cap: int,
    max_uses: int,
    seed: int,
    max_groups: int | None = None,
) -> list[Group]:
    """Greedy triples: each anchor (in seeded order) takes its two best-overlapping partners.

    `papers` is (pmid, mesh terms). A paper joins at most `max_uses` groups; a triple is
    made once. Ties break on PMID so the result depends only on the inputs and the seed.
    """
    n = len(papers)
    df: dict[str, int] = defaultdict(int)
    for _, mesh in papers:
        for term in set(mesh):
            df[term] += 1
    max_df = max(2, min(int(max_df_fraction * n), max_df_cap))
    idf = {t: math.log(n / d) for t, d in df.items() if 2 <= d <= max_df}

    terms = [sorted(t for t in set(mesh) if t in idf) for _, mesh in papers]
    postings: dict[str, list[int]] = defaultdict(list)
    for i, ts in enumerate(terms):
        for t in ts:
            postings[t].append(i)

    order = list(range(n))
    random.Random(seed).shuffle(order)
    uses = [0] * n
    made: set[frozenset[int]] = set()
    groups: list[Group] = []
    for a in order:
        if uses[a] >= max_uses or not terms[a]:
            continue
        score: dict[int, float] = defaultdict(float)
        for t in terms[a]:
            for b in postings[t]:
                if b != a and uses[b] < max_uses:
                    score[b] += idf[t]
        best = heapq.nsmallest(2, score, key=lambda b: (-score[b], papers[b][0]))
        if len(best) < 2:
            continue
        key = frozenset((a, *best))
        if key in made:
            continue
        made.add(key)
        for i in key:
            uses[i] += 1
        shared = sorted(set(terms[a]) & (set(terms[best[0]]) | set(terms[best[1]])))
        groups.append(Group(pmids=(papers[a][0], papers[best[0]][0], papers[best[1]][0]), shared=tuple(shared)))
        if max_groups is not None and len(groups) >= max_groups:
            break
    return groups
