"""Candidate mixtures: simplex grids, the reference protocol's sets, Dirichlet draws, explicit lists.

Every generator returns :class:`~merge_proxy.mixture.Mixture` objects validated by the one mixture
parser, in the experts' order, with weights summing to 1 exactly enough for a ``linear`` merge.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction

import numpy as np

from merge_proxy.errors import ConfigError
from merge_proxy.mixture import Mixture, make_mixture
from merge_proxy.resources import paper_mixtures

logger = logging.getLogger(__name__)

#: The reference protocol's sets: name -> number of domains.
PAPER_SETS = {"two_domain": 2, "three_domain": 3, "four_domain": 4}
#: How many mixtures of each set the paper reports (7 + 21 + 20 = 48).
REPORTED = {"two_domain": 7, "three_domain": 21, "four_domain": 20}
#: A grid with more points (or a Dirichlet sample of more draws) is refused before it is built: each
#: mixture is a merged-proxy evaluation, and a fine step over many domains explodes (step 0.05 over 8
#: domains: 888,030 mixtures).
MAX_GRID_POINTS = 100_000


def grid(names: Sequence[str], step: float | str, interior: bool = False) -> list[Mixture]:
    """Every point of the simplex with coordinates on multiples of ``step`` (e.g. 0.125 = 1/8).

    ``interior`` keeps only mixtures where every domain has a positive weight: with step 1/8 that is
    the reference protocol's 7 (two domains) and 21 (three domains) mixtures.
    """
    frac = Fraction(str(step)).limit_denominator(10_000)
    if frac <= 0 or frac > 1 or (1 / frac).denominator != 1:
        raise ConfigError(f"grid step {step} must divide 1 evenly (e.g. 0.5, 0.25, 0.125, 0.1)")
    k = int(1 / frac)
    low = 1 if interior else 0
    size = grid_size(len(names), k, low)
    if size == 0:
        raise ConfigError(f"an interior grid with step {step} has no point for {len(names)} domains; use a finer step")
    if size > MAX_GRID_POINTS:
        raise ConfigError(
            f"a{'n interior' if interior else ''} grid with step {step} over {len(names)} domains has {size:,} "
            f"mixtures (at most {MAX_GRID_POINTS:,}), one merged-proxy evaluation each; use a coarser step, or "
            f"sample the simplex with dirichlet: {{n: 1000}}"
        )
    return [Mixture(tuple((n, c / k) for n, c in zip(names, counts))) for counts in _compositions(k, len(names), low)]


def grid_size(domains: int, k: int, low: int = 0) -> int:
    """Points of the simplex grid with ``k`` steps per unit and every count at least ``low``
    (stars and bars): known before a single mixture is built."""
    free = k - low * domains
    return math.comb(free + domains - 1, domains - 1) if free >= 0 else 0


def _compositions(total: int, parts: int, low: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of ``parts`` integers, each at least ``low``, summing to ``total``, in lexicographic
    order. Only grid points are visited (a product over all tuples visits (k+1)^(D-1), 11^7 = 19M for
    step 0.1 over 8 domains, to keep 19,448)."""
    if parts == 1:
        if total >= low:
            yield (total,)
        return
    for first in range(low, total - low * (parts - 1) + 1):
        for rest in _compositions(total - first, parts - 1, low):
            yield (first, *rest)


def paper(names: Sequence[str], set_name: str, include_uniform: bool = False) -> list[Mixture]:
    """The reference protocol's mixtures (7 two-, 21 three-, 20 four-domain), by domain name."""
    data = paper_mixtures()
    if set_name not in PAPER_SETS:
        raise ConfigError(f"unknown paper set {set_name!r}; choose one of: {', '.join(PAPER_SETS)}")
    entry = data[set_name]
    domains = entry["domains"]
    if sorted(names) != sorted(domains):
        raise ConfigError(
            f"paper set {set_name} mixes the domains {', '.join(domains)}, but the experts are named "
            f"{', '.join(names)}; name the experts after these domains"
        )
    rows = entry["mixtures"]
    # The file lists the reported mixtures, then (three and four domains) one uniform mixture that
    # the paper did not report; the two-domain set's 0.5/0.5 is among the reported ones.
    if not include_uniform:
        rows = rows[: REPORTED[set_name]]
    return [make_mixture(dict(zip(domains, r["weights"])), list(names)) for r in rows]


def dirichlet(names: Sequence[str], n: int, alpha: float | Sequence[float] = 1.0, seed: int = 0,
              decimals: int = 4) -> list[Mixture]:
    """``n`` draws from Dirichlet(alpha), rounded to ``decimals`` so that every mixture sums to 1.

    Largest-remainder rounding on integer units of ``10**-decimals``: no weight goes below 0 (letting
    the last weight absorb the rounding made it -0.0001 when the others rounded up), and each weight
    is within one unit of its draw. Repeated mixtures (likely with small alpha) are dropped later,
    with a log line saying how many.
    """
    if not 1 <= n <= MAX_GRID_POINTS:
        raise ConfigError(f"dirichlet n must be between 1 and {MAX_GRID_POINTS:,} (one merged-proxy evaluation "
                          f"each), not {n:,}")
    alphas = [float(alpha)] * len(names) if np.isscalar(alpha) else [float(a) for a in alpha]
    if len(alphas) != len(names) or min(alphas) <= 0:
        raise ConfigError(f"dirichlet alpha must be one positive number or one per expert ({len(names)})")
    rng = np.random.default_rng(seed)
    mixtures = []
    unit = 10 ** decimals
    for draw in rng.dirichlet(alphas, size=n):
        scaled = draw * unit
        units = np.floor(scaled).astype(np.int64)
        short = unit - int(units.sum())
        units[np.argsort(-(scaled - units), kind="stable")[:short]] += 1
        mixtures.append(make_mixture({name: int(u) / unit for name, u in zip(names, units)}, list(names)))
    return mixtures


def explicit(names: Sequence[str], items: Sequence[Mapping[str, float] | str]) -> list[Mixture]:
    return [make_mixture(dict(item) if isinstance(item, Mapping) else item, list(names)) for item in items]


def unique(mixtures: Sequence[Mixture]) -> list[Mixture]:
    """Drop repeated mixtures (same key), keeping the first occurrence's order."""
    seen: dict[str, Mixture] = {}
    for m in mixtures:
        seen.setdefault(m.key(), m)
    if len(seen) < len(mixtures):
        logger.info("%d repeated mixture(s) dropped; %d distinct", len(mixtures) - len(seen), len(seen))
    return list(seen.values())

