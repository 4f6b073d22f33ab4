"""How often two judges agree on the pairs both decided, and Cohen's kappa, per principle.

A judge's decision on a pair (prompt id, answers i < j) is whether i was preferred; a
ranking decides every pair it orders. Where people and the AI judge (or two people) decided
the same pairs, agreement is the fraction decided alike and kappa = (p_o - p_e) / (1 - p_e)
corrects it for chance (p_e from each judge's own rate of preferring the first answer).
Pairs are grouped by the principle the AI judge used (`-` between two people).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from llm.label.store import Store, ranking_pairs


def decisions(store: Store) -> dict[str, dict[tuple[str, int, int], tuple[bool, str | None]]]:
    """judge -> {(id, i, j): (i preferred, principle)} from the active records (last wins)."""
    out: dict[str, dict] = {}
    for r in store.active():
        if r["kind"] == "rank":
            pairs = ranking_pairs(r["ranking"], len(store.by_id[r["id"]].responses))
        elif r["kind"] == "pair":
            pairs = [(r["chosen"], r["rejected"])]
        else:
            continue
        mine = out.setdefault(r["judge"], {})
        for better, worse in pairs:
            i, j = sorted((better, worse))
            mine[(r["id"], i, j)] = (better == i, r.get("principle"))
    return out


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two judges' binary decisions; None where chance agreement is 1."""
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def agreement_rows(store: Store) -> list[dict]:
    """One row per judge pair and principle (plus 'all'): n, agreement, kappa."""
    found = decisions(store)
    rows = []
    for first, second in itertools.combinations(sorted(found), 2):
        shared = sorted(set(found[first]) & set(found[second]))
        if not shared:
            continue
        groups: dict[str, list] = {"all": shared}
        for key in shared:
            principle = found[first][key][1] or found[second][key][1] or "-"
            groups.setdefault(principle, []).append(key)
        for principle, keys in sorted(groups.items(), key=lambda kv: kv[0] != "all"):
            a = [found[first][k][0] for k in keys]
            b = [found[second][k][0] for k in keys]
            kappa = cohen_kappa(a, b)
            rows.append({"judge_a": first, "judge_b": second, "principle": principle,
                         "pairs": len(keys),
                         "agreement": round(sum(x == y for x, y in zip(a, b, strict=True))
                                            / len(keys), 4),
                         "kappa": None if kappa is None else round(kappa, 4)})
    return rows


def format_table(rows: list[dict]) -> str:
    """The agreement rows as an aligned text table."""
    if not rows:
        return "no pairs were decided by two judges"
    header = ("judge_a", "judge_b", "principle", "pairs", "agreement", "kappa")
    cells = [header] + [tuple("n/a" if r[h] is None else str(r[h]) for h in header)
                        for r in rows]
    widths = [min(48, max(len(c[n]) for c in cells)) for n in range(len(header))]
    return "\n".join("  ".join(c[n][:48].ljust(widths[n]) for n in range(len(header)))
                     for c in cells)
