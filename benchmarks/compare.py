"""Comparison of two runs from the same card: per-entry median deltas and regressions."""

from __future__ import annotations

from audiox_engine.benchmarks import results
from audiox_engine.benchmarks.environment import card_label, same_card
from audiox_engine.benchmarks.report import caption, format_ms, markdown_table

DEFAULT_THRESHOLD = 0.05


class ComparisonError(ValueError):
    """Two runs that cannot be compared (different cards)."""


def compare(old: dict, new: dict, threshold: float = DEFAULT_THRESHOLD) -> tuple[str, list[dict]]:
    """(markdown table of deltas, list of regressions). Raises ComparisonError across cards.

    A regression is an entry present in both whose median grew by more than `threshold`
    (0.05 = 5%).
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if not same_card(old["env"], new["env"]):
        raise ComparisonError(f"runs are from different cards: old on {card_label(old['env'])}, new on "
                              f"{card_label(new['env'])}; compare runs from the same card only")
    old_by = {results.entry_key(e): e for e in old["entries"]}
    new_by = {results.entry_key(e): e for e in new["entries"]}
    rows, regressions = [], []
    for key in list(old_by) + [k for k in new_by if k not in old_by]:
        o, n = old_by.get(key), new_by.get(key)
        name = (o or n)["name"]
        params = (o or n)["params"]
        label = f"{name} ({', '.join(f'{k}={v}' for k, v in sorted(params.items()) if k in ('shape', 'batch', 'preset'))})"
        if o is None or n is None:
            rows.append([label, format_ms(o and o["median_ms"]), format_ms(n and n["median_ms"]), "", "new" if o is None else "removed"])
            continue
        delta = (n["median_ms"] - o["median_ms"]) / o["median_ms"] if o["median_ms"] > 0 else 0.0
        overlap = n["p10_ms"] <= o["p90_ms"] and o["p10_ms"] <= n["p90_ms"]
        if delta > threshold:
            verdict = "**REGRESSION**" + (" (p10–p90 ranges overlap)" if overlap else "")
            regressions.append({"key": key, "name": name, "old_ms": o["median_ms"], "new_ms": n["median_ms"],
                                "delta": delta})
        elif delta < -threshold:
            verdict = "improvement"
        else:
            verdict = "within threshold"
        rows.append([label, format_ms(o["median_ms"]), format_ms(n["median_ms"]), f"{100 * delta:+.1f}%", verdict])
    notes = []
    for k in ("driver_version", "cuda_version", "torch_version", "triton_version"):
        if old["env"].get(k) != new["env"].get(k):
            notes.append(f"- {k} differs: {old['env'].get(k)} → {new['env'].get(k)}")
    md = "\n".join([
        f"### Compare (threshold {100 * threshold:.1f}% on the median)\n",
        f"old: {caption(old['env'])}  ",
        f"new: {caption(new['env'])}\n",
        markdown_table(["entry", "old median", "new median", "delta", "verdict"], rows),
        *([""] + notes if notes else []),
        f"\n{len(regressions)} regression(s).",
    ])
    return md, regressions

