"""Rankings of mixtures by score, with ties taken seriously, and what choosing by proxy costs.

Tiny models and exact-match metrics give many equal scores: a ranking must not say one mixture beats
another when their scores are equal, and a "hit" or "regret" when the proxy's best is tied is an
expectation over the tied picks, not the luck of an id's sort order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

#: Scores equal to this many significant digits are tied: a weighted mean of equal scores can differ
#: from another in its last bits, and such a difference must not pick a mixture.
TIE_DIGITS = 12


def tie_key(score: float) -> float:
    """The score as ties are judged: rounded to :data:`TIE_DIGITS` significant digits."""
    return float(f"{score:.{TIE_DIGITS}g}")


def rank(scores: Mapping[str, float]) -> list[str]:
    """Mixture ids best first. Tied mixtures are listed by mixture_id so that tables and files are
    stable, but that order means nothing: :func:`competition_ranks` gives them equal ranks and
    :func:`best_set` names all of them."""
    return sorted(scores, key=lambda m: (-tie_key(scores[m]), m))


def competition_ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """mixture_id -> rank, 1 = best, tied mixtures sharing the best rank of their group ("1, 1, 3"):
    a rank must not say one mixture beats another when their scores are equal."""
    from scipy.stats import rankdata

    ids = list(scores)
    if not ids:
        return {}
    ranks = rankdata([-tie_key(scores[m]) for m in ids], method="min")
    return {m: int(r) for m, r in zip(ids, ranks)}


def best_set(scores: Mapping[str, float]) -> tuple[str, ...]:
    """Every mixture tied for the best score, by mixture_id; empty for no scores."""
    if not scores:
        return ()
    top = max(tie_key(s) for s in scores.values())
    return tuple(sorted(m for m, s in scores.items() if tie_key(s) == top))


def _tie_groups(scores: Mapping[str, float]) -> list[list[str]]:
    """Mixtures grouped by tied score, best group first."""
    groups: dict[float, list[str]] = {}
    for m in rank(scores):
        groups.setdefault(tie_key(scores[m]), []).append(m)
    return list(groups.values())


def expected_top_k_hit(proxy: Mapping[str, float], targets: Iterable[str], k: int) -> float:
    """Probability that one of ``targets`` is in the proxy's first ``k`` when the proxy's ties are
    broken uniformly at random.

    Without ties this is 1.0 or 0.0. A tie straddling the cut at ``k`` (``g`` mixtures for ``s`` places,
    ``h`` of them targets) misses with probability C(g-h, s) / C(g, s). The expectation, rather than one
    arbitrary tie-break, keeps the mixture-id spelling out of the verdict: a proxy that scores every
    mixture alike earns the hit rate of a random pick, not a hit or a miss by alphabetical luck.
    """
    wanted = set(targets)
    slots = k
    for group in _tie_groups(proxy):
        if slots <= 0:
            break
        hits = len(wanted.intersection(group))
        if len(group) <= slots:
            if hits:
                return 1.0
            slots -= len(group)
            continue
        return 1.0 - math.comb(len(group) - hits, slots) / math.comb(len(group), slots)
    return 0.0


def expected_regret(picks: Sequence[str], truth: Mapping[str, float]) -> float | None:
    """The truth's best score minus the mean truth score of ``picks`` (the proxy's tied best, each
    equally likely to be chosen); None when a pick has no truth score (its cost is unknown)."""
    if not truth or not picks or any(m not in truth for m in picks):
        return None
    top = max(truth.values())
    return float(math.fsum(top - truth[m] for m in picks) / len(picks))
