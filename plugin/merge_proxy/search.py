"""Finding published experts on the Hub, by the tags and card metadata merge-proxy gives them."""

from __future__ import annotations

from dataclasses import dataclass

from merge_proxy.hub import HubOptions, explain_error
from merge_proxy.provenance import DOMAIN_TAG_PREFIX, EXPERT_TAG


@dataclass(frozen=True)
class ExpertListing:
    repo: str
    domain: str | None
    base: str | None
    kind: str | None
    rank: int | None
    samples: int | None
    sha: str | None


def find_experts(
    base: str | None = None, domain: str | None = None, author: str | None = None, hub: HubOptions | None = None
) -> list[ExpertListing]:
    """One list_models call: tags select (expert, domain, base), card metadata fills the columns."""
    hub = hub or HubOptions()
    tags = [EXPERT_TAG]
    if domain:
        tags.append(f"{DOMAIN_TAG_PREFIX}{domain}")
    if base:
        tags.append(f"base_model:{base}")
    try:
        models = list(hub.api().list_models(filter=tags, author=author, cardData=True, full=True))
    except Exception as err:  # noqa: BLE001
        raise explain_error(err, "(experts search)", None, hub) from err
    rows = []
    for m in models:
        card = m.card_data.to_dict() if m.card_data else {}
        meta = card.get("merge_proxy") or {}
        domains = [t[len(DOMAIN_TAG_PREFIX):] for t in (m.tags or []) if t.startswith(DOMAIN_TAG_PREFIX)]
        base_model = card.get("base_model")
        rows.append(ExpertListing(
            repo=m.id, domain=meta.get("domain") or (domains[0] if domains else None),
            base=base_model if isinstance(base_model, str) else ", ".join(base_model or []) or None,
            kind=meta.get("kind"), rank=meta.get("rank"), samples=meta.get("samples"), sha=m.sha,
        ))
    return sorted(rows, key=lambda r: (r.domain or "", r.repo))


def format_table(rows: list[ExpertListing]) -> str:
    header = ("repo", "domain", "base", "kind", "rank", "samples", "sha")
    cells = [header] + [
        (r.repo, r.domain or "-", r.base or "-", r.kind or "-", str(r.rank or "-"), str(r.samples or "-"),
         (r.sha or "-")[:10]) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
