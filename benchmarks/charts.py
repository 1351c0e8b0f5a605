"""The PNG plots of BENCHMARKS.md, from validated result runs (matplotlib, Agg backend).

Per run: median latency against sampling steps and the speedup over the eager teacher
for each of the headline, e2e and loops groups it holds, the kernels' fraction of this
card's measured roofline, and the cpu suite's speed-ups over eager.
"""

from __future__ import annotations

import os
from pathlib import Path

from audiox_engine.benchmarks.environment import card_label
from audiox_engine.benchmarks.report import GROUP_TITLES, cpu_workload_title, entries_of, roofline_fractions, speedups


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_vs_steps(run: dict, group: str, path: Path) -> bool:
    """Median latency against steps, one line per backend; Turbo as stars. False if no data."""
    entries = [e for e in entries_of(run, group) if "steps" in e["params"]]
    if not entries:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for backend in sorted({e["params"]["backend"] for e in entries}):
        teach = sorted((e["params"]["steps"], e["median_ms"]) for e in entries
                       if e["params"]["backend"] == backend and e["params"]["mode"] == "teacher")
        turbo = [(e["params"]["steps"], e["median_ms"]) for e in entries
                 if e["params"]["backend"] == backend and e["params"]["mode"] == "turbo"]
        line = None
        if teach:
            (line,) = ax.plot(*zip(*teach), marker="o", label=f"teacher+CFG, {backend}")
        if turbo:
            ax.plot(*zip(*turbo), marker="*", markersize=14, linestyle="none",
                    color=None if line is None else line.get_color(), label=f"Turbo, {backend}")
    from matplotlib import ticker

    steps = sorted({e["params"]["steps"] for e in entries})
    lat = [e["median_ms"] for e in entries]
    # Log axes only when the data spans them; inside one decade they would carry no labels.
    if steps[-1] / steps[0] > 10:
        ax.set_xscale("log")
    if max(lat) / max(min(lat), 1e-9) > 20:
        ax.set_yscale("log")
    ax.set_xticks(steps)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(f"{GROUP_TITLES.get(group, group)}\n{card_label(run['env'])}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_speedup(run: dict, group: str, path: Path) -> bool:
    sp = speedups(run, group)
    if not sp:
        return False
    plt = _plt()
    names = sorted(sp, key=sp.get)
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(names) + 1.5))
    ax.barh(names, [sp[n] for n in names], color="tab:blue")
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speedup vs eager teacher (×, log)")
    ax.set_title(f"{GROUP_TITLES.get(group, group)}\n{card_label(run['env'])}", fontsize=9)
    for i, n in enumerate(names):
        ax.text(sp[n], i, f" {sp[n]:.1f}×", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_cpu_speedups(run: dict, path: Path, group: str = "cpu") -> bool:
    """The cpu suite: each row's speed-up over eager, bars grouped by workload."""
    entries = [e for e in entries_of(run, group) if "speedup_vs_eager" in e["metrics"]]
    if not entries:
        return False
    plt = _plt()
    workloads, variants = [], []
    for e in entries:
        w, v = cpu_workload_title(e["params"]), e["params"].get("variant", "?")
        workloads += [w] if w not in workloads else []
        variants += [v] if v not in variants else []
    speed = {(cpu_workload_title(e["params"]), e["params"].get("variant")): e["metrics"]["speedup_vs_eager"]
             for e in entries}
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(workloads))]
        ys = [speed.get((w, v), 0.0) for w in workloads]
        ax.bar(xs, ys, width, label=v)
        for x, y in zip(xs, ys):
            if y:
                ax.text(x, y, f"{y:.2f}×", ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(workloads)), workloads, fontsize=8)
    ax.set_ylabel("speed-up over eager fp32 (×)")
    ax.set_title(f"{GROUP_TITLES.get(group, group)}\n{card_label(run['env'])}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_roofline(run: dict, runs: list[dict], path: Path) -> bool:
    fr = [(lbl, f) for lbl, f, _ in roofline_fractions(run, runs) if f is not None]
    if not fr:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(fr) + 1.5))
    ax.barh([l for l, _ in fr], [100 * f for _, f in fr], color="tab:green")
    ax.axvline(100, color="k", linewidth=0.8)
    ax.set_xlabel("% of this card's measured ceiling")
    ax.set_title(f"Kernels, roofline fraction\n{card_label(run['env'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def make_plots(runs: list[dict], plot_dir: Path, link_from: Path | None, stems: list[str]) -> dict[int, dict[str, str]]:
    """Writes the PNGs; returns {run index: {"group:kind": path for markdown}}."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    out: dict[int, dict[str, str]] = {}
    for i, (run, stem) in enumerate(zip(runs, stems)):
        made = {}
        for group in ("headline", "e2e", "loops"):
            p = plot_dir / f"{stem}-{group}-latency_vs_steps.png"
            if plot_latency_vs_steps(run, group, p):
                made[f"{group}:latency vs steps"] = p
            p = plot_dir / f"{stem}-{group}-speedup.png"
            if plot_speedup(run, group, p):
                made[f"{group}:speedup"] = p
        p = plot_dir / f"{stem}-cpu-speedup.png"
        if plot_cpu_speedups(run, p):
            made["cpu:speedup"] = p
        p = plot_dir / f"{stem}-kernels-roofline.png"
        if plot_roofline(run, runs, p):
            made["kernels:roofline fraction"] = p
        base = link_from.parent if link_from is not None else Path.cwd()
        out[i] = {k: Path(os.path.relpath(v, base)).as_posix() for k, v in made.items()}
    return out

