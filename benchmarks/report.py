"""Result files -> the markdown tables of BENCHMARKS.md (plots: `charts.py`; comparing
two runs: `compare.py`).

Only numbers read from validated result files are written: a table with nothing
measured says "not measured yet". Every table carries the card, date, driver, CUDA,
torch and Triton versions and the commit it was measured at. Where a group holds engine
rows and their peers (`workloads.PEERS`: eager, eager-fp32, torch.compile), a second
table gives each engine row's speed against each peer of the same configuration,
measured in the same run.

BENCHMARKS.md keeps hand-written prose: each run's tables sit in a generated block of
their own, between a BEGIN and an END marker naming the run (`run_key`: suite, card or CPU,
preset). A report replaces the blocks of the runs it was given and appends new ones at the
end of the file; the blocks of other runs and the prose around them are kept.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from audiox_engine.audiox._io import atomic_path
from audiox_engine.benchmarks.environment import card_label, same_card
from audiox_engine.benchmarks.workloads import PEERS

MARK_BEGIN_PREFIX = "<!-- BEGIN GENERATED "
MARK_END_PREFIX = "<!-- END GENERATED "
MARK_NOTE = " · written by `audiox bench report`: edits inside are overwritten"
_LEGACY_KEY = "by benchmarks/report.py"  # the one unkeyed block of an older report.py
NEW_FILE_HEAD = ("# Benchmarks\n\nHow to reproduce: `audiox bench --suite all --out results.json`, then "
                 "`audiox bench report results.json --md BENCHMARKS.md --plots benchmarks/plots`.\n\n")
NOT_MEASURED = "_not measured yet_"

GROUP_TITLES = {
    "headline": "Turbo (4 steps) vs teacher with CFG",
    "e2e": "End to end (conditioning, sampling, VAE decode)",
    "loops": "Sampling loops (DiT only)",
    "e2e_stages": "End-to-end stages alone (conditioning; VAE decode with crop and normalise)",
    "dit": "One DiT forward",
    "kernels": "Kernels (fraction of this card's measured roofline)",
    "ceilings": "Measured ceilings of this card",
    "throughput": "Throughput: clips per second against batch size (one generator per item)",
    "cpu": "CPU: eager fp32, torch.compile and the engine's CPU backend (fp32, bf16), rows interleaved",
}
_GROUP_ORDER = ("headline", "e2e", "e2e_stages", "loops", "dit", "kernels", "ceilings")


# ---------------------------------------------------------------- formatting


def caption(env: dict) -> str:
    """One line naming card, date, driver, CUDA, torch, Triton and commit."""
    git = env.get("git") or {}
    commit = (git.get("commit") or "no commit")[:10]
    if git.get("dirty"):
        commit += " (dirty)"
    cfg = env.get("config") or {}
    parts = [
        f"card: **{card_label(env)}**",
        f"date: {env.get('date_utc', '?')}",
        f"driver: {env.get('driver_version') or 'n/a'}",
        f"CUDA: {env.get('cuda_version') or 'n/a'}",
        f"torch: {env.get('torch_version')}",
        f"Triton: {env.get('triton_version') or 'n/a'}",
        f"commit: {commit}",
    ]
    if cfg.get("preset"):
        parts.append(f"preset: {cfg['preset']}" + (" (smoke)" if cfg.get("smoke") else ""))
    return "_" + " · ".join(parts) + "_"


def format_ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v / 1000:.3g} s"
    return f"{v:.4g} ms"


def _num(v, fmt="{:.3g}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _throttle_flag(entry: dict) -> str:
    tel = entry.get("telemetry")
    if tel is None:
        return "n/a"
    return "**THROTTLED** (" + ", ".join(tel["throttled_by"]) + ")" if tel.get("throttled") else "no"


def _compile(entry: dict) -> str:
    c = entry.get("compile_s")
    return "n/a" if c is None else f"{c:.2f} s"


def entries_of(run: dict, group: str) -> list[dict]:
    return [e for e in run["entries"] if e["group"] == group]


def _skipped(run: dict, group: str) -> list[dict]:
    return [s for s in run["skipped"] if s["group"] == group]


def _collapsed_skips(run: dict, group: str) -> list[tuple[str, str]]:
    """(label, reason) per skipped backend: 'turbo-4/engine-fp8' ... with one reason become
    one row '5 configs/engine-fp8' instead of five identical ones."""
    by: dict[tuple[str, str], list[str]] = {}
    for s in _skipped(run, group):
        config, _, backend = s["name"].rpartition("/")
        by.setdefault((backend, s["reason"]), []).append(config or backend)
    out = []
    for (backend, reason), configs in by.items():
        if len(configs) == 1:
            out.append((configs[0] + ("/" + backend if configs[0] != backend else ""), reason))
        else:
            out.append((f"{len(configs)} configs ({', '.join(configs)})/{backend}", reason))
    return out


# ---------------------------------------------------------------- headline


def _reference(run: dict, group: str) -> dict | None:
    """The eager teacher entry with the most steps: the baseline everything is compared to."""
    teachers = [e for e in entries_of(run, group)
                if e["params"].get("mode") == "teacher" and e["params"].get("backend") == "eager"]
    return max(teachers, key=lambda e: e["params"]["steps"]) if teachers else None


def _config_label(e: dict) -> str:
    p = e["params"]
    if p.get("mode") == "turbo":
        return f"Turbo {p.get('steps')} steps"
    if p.get("mode") == "teacher":
        return f"teacher N={p.get('steps')}, CFG {p.get('cfg_scale')}"
    return e["name"].rpartition("/")[0] or e["name"]


def speedups(run: dict, group: str = "headline") -> dict[str, float]:
    """entry name -> reference median / entry median."""
    ref = _reference(run, group)
    if ref is None:
        return {}
    return {e["name"]: ref["median_ms"] / e["median_ms"] for e in entries_of(run, group) if e["median_ms"] > 0}


def headline_table(run: dict, group: str = "headline") -> str:
    """The Turbo-vs-teacher table for `group` of `run` (also used for loops and e2e)."""
    entries = entries_of(run, group)
    skipped = _skipped(run, group)
    if not entries and not skipped:
        return NOT_MEASURED
    ref = _reference(run, group)
    ref_steps = ref["params"]["steps"] if ref else None
    rows = []
    for e in sorted(entries, key=lambda e: (e["params"].get("backend", ""), e["params"].get("mode") != "turbo",
                                            -e["params"].get("steps", 0))):
        p = e["params"]
        fb = p.get("forward_batch", e.get("batch"))
        nfe = f"{e['nfe']} × batch {fb}" if e["nfe"] is not None else "n/a"
        speed = f"{ref['median_ms'] / e['median_ms']:.2f}×" if ref and e["median_ms"] > 0 else "n/a (no eager teacher)"
        ratio = f"{ref['nfe'] / e['nfe']:.1f}" if ref and e["nfe"] else "n/a"
        rows.append([_config_label(e), p.get("backend", "?"), p.get("dtype", "?"), nfe, format_ms(e["median_ms"]),
                     f"{format_ms(e['p10_ms'])} – {format_ms(e['p90_ms'])}", _num(e["rtf"], "{:.2f}"), speed, ratio,
                     _compile(e), _throttle_flag(e)])
    for label, reason in _collapsed_skips(run, group):
        rows.append([label, "", "", "", "skipped", "", "", "", "", "", reason])
    level = {e["params"].get("level") for e in entries} - {None}
    level_txt = {"e2e": "end to end: conditioning + sampling + VAE decode",
                 "loops": "sampling loop over the DiT only (no conditioning, no decode)"}
    header = ["config", "backend", "dtype", "NFE (forwards × batch)", "median latency", "p10 – p90",
              "RTF", f"speedup vs eager teacher-{ref_steps}" if ref else "speedup", "NFE ratio",
              "first-call overhead", "throttled"]
    notes = [
        f"Level: {', '.join(level_txt.get(x, x) for x in sorted(level)) or 'n/a'}.",
        "Teacher with CFG: each of the N steps is one DiT forward at batch 2B (conditional and null side by "
        "side), so its NFE is N forwards at batch 2B; Turbo makes 4 forwards at batch B with no CFG.",
        "RTF = seconds of audio produced / wall seconds (batch included); > 1 is faster than real time.",
        f"Speedup = median of the eager {ref_steps}-step teacher / median of the row; "
        f"NFE ratio = {ref_steps} / row NFE." if ref else "No eager teacher was measured, so no speedup.",
        "First-call overhead = first call minus one steady call (compilation, autotuning, graph capture; "
        "for the `compile` rows, torch.compile's compilation); it is excluded from the median.",
    ]
    if (run["env"].get("config") or {}).get("smoke"):
        notes.insert(0, "**Smoke run** (tiny preset, teacher steps scaled down, 2 repetitions): checks the "
                        "harness, says nothing about speed.")
    return markdown_table(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)


# ---------------------------------------------------------------- other groups


def _ceilings(runs: list[dict], env: dict) -> dict:
    """Measured copy GB/s and bf16 TFLOP/s from any run on the same card as `env`."""
    out = {}
    for run in runs:
        if not same_card(run["env"], env):
            continue
        for e in entries_of(run, "ceilings"):
            if "gbps" in e["metrics"]:
                out["gbps"] = e["metrics"]["gbps"]
            if "tflops" in e["metrics"]:
                out["tflops"] = e["metrics"]["tflops"]
    return out


def _fraction(entry: dict, ceil: dict) -> tuple[float | None, str]:
    """Achieved rate over the matching measured ceiling: TFLOP/s vs matmul, else GB/s vs copy."""
    m = entry["metrics"]
    if "tflops" in m and "tflops" in ceil:
        return m["tflops"] / ceil["tflops"], "bf16 matmul"
    if "gbps" in m and "gbps" in ceil:
        return m["gbps"] / ceil["gbps"], "copy bandwidth"
    return None, "ceiling not measured"


def roofline_fractions(run: dict, runs: list[dict]) -> list[tuple[str, float | None, str]]:
    """(label, fraction of ceiling or None, which ceiling) for each kernel entry."""
    ceil = _ceilings(runs, run["env"])
    return [(f"{e['name']} {e['params'].get('shape')} {e['params'].get('dtype')}", *_fraction(e, ceil))
            for e in entries_of(run, "kernels")]


def kernels_table(run: dict, runs: list[dict]) -> str:
    entries = entries_of(run, "kernels")
    if not entries and not _skipped(run, "kernels"):
        return NOT_MEASURED
    ceil = _ceilings(runs, run["env"])
    rows = []
    for e in entries:
        m, p = e["metrics"], e["params"]
        f, c = _fraction(e, ceil)
        rows.append([p.get("kernel"), p.get("impl"), str(p.get("shape")), p.get("dtype"), format_ms(e["median_ms"]),
                     f"{format_ms(e['p10_ms'])} – {format_ms(e['p90_ms'])}", _num(m.get("gbps"), "{:.3g}"),
                     _num(m.get("tflops"), "{:.3g}"), "n/a" if f is None else f"{100 * f:.0f}% of {c}",
                     _compile(e)])
    for label, reason in _collapsed_skips(run, "kernels"):
        rows.append([label, "skipped", "", "", "", "", "", "", reason, ""])
    return markdown_table(["kernel", "impl", "shape", "dtype", "median", "p10 – p90", "GB/s", "TFLOP/s",
                   "roofline fraction", "compile"], rows)


def generic_table(run: dict, group: str) -> str:
    entries = entries_of(run, group)
    if not entries and not _skipped(run, group):
        return NOT_MEASURED
    rows = []
    for e in entries:
        m = e["metrics"]
        extra = ", ".join(f"{k} {m[k]:.3g}" for k in ("gbps", "tflops") if isinstance(m.get(k), (int, float)))
        rows.append([e["name"], e["params"].get("dtype", ""), format_ms(e["median_ms"]),
                     f"{format_ms(e['p10_ms'])} – {format_ms(e['p90_ms'])}", str(len(e["samples_ms"])), extra or "",
                     _compile(e), _throttle_flag(e)])
    for label, reason in _collapsed_skips(run, group):
        rows.append([label, "", "skipped", "", "", "", "", reason])
    return markdown_table(["name", "dtype", "median", "p10 – p90", "reps", "rate", "first-call overhead", "throttled"],
                  rows)


_CPU_WORKLOADS = {"dit_forward": "one DiT forward", "turbo": "Turbo loop", "vae_decode": "VAE decode"}


def cpu_workload_title(params: dict) -> str:
    if params.get("workload") == "turbo":
        return f"Turbo {params.get('steps')}-step loop"
    return _CPU_WORKLOADS.get(params.get("workload"), str(params.get("workload")))


def cpu_table(run: dict, group: str = "cpu") -> str:
    """The cpu suite's rows: median, speed-ups over eager and compiled (wall and process CPU
    time) from the same run, first call, accuracy against eager; then the ISA and the load."""
    entries = entries_of(run, group)
    if not entries and not _skipped(run, group):
        return NOT_MEASURED
    env = run["env"]
    isa = env.get("cpu_isa") or {}
    first = entries[0]["params"] if entries else {}
    rows = []
    for e in entries:
        m, p = e["metrics"], e["params"]
        acc = ""
        if "rel_err_vs_eager" in m:
            acc = f"rel err {m['rel_err_vs_eager']:.1e}, cosine {m['cosine_vs_eager']:.6f}"
            if "snr_db_vs_eager" in m:
                acc += f", SNR {m['snr_db_vs_eager']:.1f} dB"
        ratios = [f"{m[k]:.2f}x" if k in m else "n/a"
                  for k in ("speedup_vs_eager", "speedup_vs_compiled", "cpu_time_speedup_vs_eager")]
        rows.append([cpu_workload_title(p), p.get("variant", ""), f"{e['median_ms'] / 1e3:.3f} s", *ratios,
                     f"{e['first_call_s']:.1f} s", acc])
    for label, reason in _collapsed_skips(run, group):
        rows.append([label, "skipped", "", "", "", "", "", reason])
    table = markdown_table(["workload", "row", "median", "vs eager", "vs compiled", "CPU time vs eager",
                            "first call (compile)", "accuracy vs eager"], rows)
    loads: dict[str, tuple[float, float]] = {}
    for e in entries:
        loads.setdefault(cpu_workload_title(e["params"]), (e["metrics"]["loadavg_before"][0],
                                                           e["metrics"]["loadavg_after"][0]))
    return (f"CPU {env.get('cpu_model')} ({env.get('cpu_count_usable')} cores, {env.get('torch_num_threads')} "
            f"threads), ISA {isa.get('capability')}, AMX {isa.get('amx')}, AVX-512 BF16 {isa.get('avx512_bf16')}; "
            f"width {first.get('width')}, depth {first.get('depth')}, batch {first.get('batch')}; load average at "
            f"start {', '.join(f'{v:.2f}' for v in env.get('loadavg_at_start', []))}.\n\n{table}\n\n"
            "Load average (1 min) before -> after each workload's rows: "
            + "; ".join(f"{k} {a:.2f} -> {b:.2f}" for k, (a, b) in loads.items()) + ".")


def throughput_table(run: dict, group: str = "throughput") -> str:
    """Clips per second against batch size, with the load average around each row."""
    entries = entries_of(run, group)
    if not entries and not _skipped(run, group):
        return NOT_MEASURED
    rows = []
    for e in entries:
        m, p = e["metrics"], e["params"]
        load = " → ".join(_num(m.get(k), "{:.2f}") for k in ("load_average_1m_before", "load_average_1m_after"))
        rows.append([p["backend"], p.get("dtype", ""), str(e["batch"]), _num(m.get("clips_per_s")),
                     format_ms(e["median_ms"]), f"{format_ms(e['p10_ms'])} – {format_ms(e['p90_ms'])}",
                     _num(e["rtf"]), str(p.get("threads", "")), load])
    for label, reason in _collapsed_skips(run, group):
        rows.append([label, "", "", "skipped", "", "", "", "", reason])
    return markdown_table(["backend", "dtype", "batch", "clips/s", "median per batch", "p10 – p90", "RTF", "threads",
                           "load avg (1 min) before → after"], rows)


def peer_ratios(run: dict, group: str) -> list[tuple[dict, dict[str, float]]]:
    """(engine entry, {peer backend: peer median / engine median}) for each engine row of
    `group` that has a peer of the same configuration (same name before the backend)."""
    by_config: dict[str, dict[str, dict]] = {}
    for e in entries_of(run, group):
        config, _, backend = e["name"].rpartition("/")
        by_config.setdefault(config, {})[backend] = e
    out = []
    for rows in by_config.values():
        for backend, e in sorted(rows.items()):
            if backend.startswith("engine-") and e["median_ms"] > 0:
                ratios = {p: rows[p]["median_ms"] / e["median_ms"] for p in PEERS if p in rows}
                if ratios:
                    out.append((e, ratios))
    return out


def peer_table(run: dict, group: str) -> str:
    """Each engine row against its peers measured in the same run; "" when there are none."""
    pairs = peer_ratios(run, group)
    peers = [p for p in PEERS if any(p in ratios for _, ratios in pairs)]
    if not peers:
        return ""
    rows = [[_config_label(e), e["params"].get("backend", "?"), format_ms(e["median_ms"]),
             *(f"{ratios[p]:.2f}×" if p in ratios else "not measured" for p in peers)] for e, ratios in pairs]
    dtypes = {e["params"]["backend"]: e["params"].get("dtype") for e in entries_of(run, group)}
    names = [f"vs {p}" + (f" ({dtypes[p]})" if dtypes.get(p) else "") for p in peers]
    return ("\nThe engine against its peers, same configuration, same run (peer median / engine median; "
            "> 1: the engine is faster). `compile` is torch.compile of the eager reference in the same dtype "
            "(its compilation is the first-call overhead above, not in the median); `eager-fp32` is the "
            "release's own precision.\n\n" + markdown_table(["config", "engine", "engine median", *names], rows))


def _entry_notes(run: dict, group: str) -> str:
    """Notes the harness attached to this group's rows (timing cross-checks, NFE checks,
    engine setup), each once with the rows it applies to."""
    by_note: dict[str, list[str]] = {}
    for e in entries_of(run, group):
        notes = list((e.get("timing") or {}).get("notes") or []) + list(e["metrics"].get("notes") or [])
        for n in notes:
            by_note.setdefault(str(n), []).append(e["name"])
    if not by_note:
        return ""
    lines = []
    for note, names in by_note.items():
        rows = "all rows" if len(names) == len(entries_of(run, group)) > 1 else ", ".join(names)
        lines.append(f"- {note} ({rows})")
    return "\nHarness notes:\n" + "\n".join(lines)


def render_run(run: dict, runs: list[dict], plots: dict[str, str] | None = None) -> str:
    """Markdown for one run: a section per group it holds, each with its caption."""
    groups = [g for g in _GROUP_ORDER if entries_of(run, g) or _skipped(run, g)]
    groups += sorted({e["group"] for e in run["entries"]} - set(groups))
    out = []
    for g in groups:
        out.append(f"### {GROUP_TITLES.get(g, g)}\n\n{caption(run['env'])}\n")
        if g in ("headline", "loops", "e2e"):
            out.append(headline_table(run, g))
        elif g == "kernels":
            out.append(kernels_table(run, runs))
        elif g == "throughput":
            out.append(throughput_table(run))
        elif g == "cpu":
            out.append(cpu_table(run, g))
        else:
            out.append(generic_table(run, g))
        peers = peer_table(run, g) if g != "cpu" else ""  # the cpu table holds its own ratios
        if peers:
            out.append(peers)
        notes = _entry_notes(run, g)
        if notes:
            out.append(notes)
        for kind, path in (plots or {}).items():
            if kind.startswith(g + ":"):
                out.append(f"\n![{kind}]({path})")
        out.append("")
    if not run["complete"]:
        out.insert(0, "> **Incomplete run** (stopped by its time budget or an error): rows may be missing.\n")
    return "\n".join(out)


def run_key(run: dict) -> str:
    """A run's identity in BENCHMARKS.md: suite · card or CPU · preset (with "(smoke)"); a new
    run of the same identity replaces its generated block."""
    cfg = run["env"].get("config") or {}
    preset = str(cfg.get("preset") or "no preset") + (" (smoke)" if cfg.get("smoke") else "")
    key = " · ".join((str(run["suite"]), card_label(run["env"]), preset))
    return re.sub(r"\s+", " ", key).replace("-->", "->").strip()


def run_section(run: dict, runs: list[dict], plots: dict[str, str] | None = None) -> str:
    """One run's heading and tables."""
    preset = (run["env"].get("config") or {}).get("preset")
    heading = f"## Suite `{run['suite']}` on {card_label(run['env'])}" + (f", preset `{preset}`" if preset else "")
    return f"{heading}\n\n{render_run(run, runs, plots)}"


def render_markdown(runs: list[dict], plots: dict[int, dict[str, str]] | None = None) -> str:
    """Every run's tables, one after the other (what `bench report` prints without --md)."""
    if not runs:
        return f"## Results\n\n{NOT_MEASURED}: no result file was given to `audiox bench report`.\n"
    parts = ["## Results\n", "Generated by `audiox bench report` from the result files; regenerate, do not edit.\n"]
    parts += [run_section(run, runs, (plots or {}).get(i)) for i, run in enumerate(runs)]
    return "\n".join(parts)


def render_blocks(runs: list[dict], plots: dict[int, dict[str, str]] | None = None) -> list[tuple[str, str]]:
    """(run_key, markdown) per run: the generated blocks of BENCHMARKS.md."""
    return [(run_key(run), run_section(run, runs, (plots or {}).get(i))) for i, run in enumerate(runs)]


# ---------------------------------------------------------------- BENCHMARKS.md


class GeneratedBlockError(ValueError):
    """A markdown file whose generated-block markers do not pair up; the message names the line."""


def begin_marker(key: str) -> str:
    return f"{MARK_BEGIN_PREFIX}{key}{MARK_NOTE} -->"


def end_marker(key: str) -> str:
    return f"{MARK_END_PREFIX}{key} -->"


def block_text(key: str, body: str) -> str:
    return f"{begin_marker(key)}\n{body.rstrip()}\n{end_marker(key)}"


_MARKER = re.compile(r"^<!-- (BEGIN|END) GENERATED (.*?) -->[ \t\r]*$", re.MULTILINE)


def generated_blocks(text: str) -> dict[str, tuple[int, int]]:
    """{key: (start, end)} of each generated block of `text`, markers included; a marker
    without its partner, a block inside another, an unkeyed block of an older report.py or
    two blocks of one key raise GeneratedBlockError naming the line."""
    found: dict[str, tuple[int, int, int]] = {}
    opened = None  # (key, start, line) of the block being read
    for m in _MARKER.finditer(text):
        kind, key = m.group(1), m.group(2).strip()
        line = text.count("\n", 0, m.start()) + 1
        if key.startswith(_LEGACY_KEY):
            raise GeneratedBlockError(
                f"line {line}: a generated block of an older report.py, not keyed by run: delete it (its BEGIN "
                "line to its END line) and regenerate its runs from their result files")
        if kind == "BEGIN":
            key = key.removesuffix(MARK_NOTE).strip()
            if opened is not None:
                raise GeneratedBlockError(f"line {opened[2]}: generated block '{opened[0]}' has no END marker "
                                          f"before the next BEGIN (line {line})")
            if key in found:
                raise GeneratedBlockError(f"line {line}: a second generated block '{key}' "
                                          f"(the first begins at line {found[key][2]})")
            opened = (key, m.start(), line)
        elif opened is None:
            raise GeneratedBlockError(f"line {line}: END marker of generated block '{key}' without its BEGIN")
        elif key != opened[0]:
            raise GeneratedBlockError(f"line {line}: END marker '{key}' closes generated block '{opened[0]}' "
                                      f"(line {opened[2]}); the keys must match")
        else:
            found[key] = (opened[1], m.end(), opened[2])
            opened = None
    if opened is not None:
        raise GeneratedBlockError(f"line {opened[2]}: generated block '{opened[0]}' has no END marker")
    return {key: (start, end) for key, (start, end, _) in found.items()}


def splice_generated(existing: str | None, blocks: list[tuple[str, str]]) -> tuple[str, list[str], list[str]]:
    """(new text, keys replaced, keys appended): each (key, markdown) of `blocks` replaces the
    generated block of that key in `existing`, or is appended at its end; other blocks and
    the prose around them are kept. `existing` None starts a new file."""
    keys = [k for k, _ in blocks]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise GeneratedBlockError(f"two runs of the same identity {twice}: give one result file per block")
    if existing is None:
        existing = NEW_FILE_HEAD + ("" if blocks else
                                    f"{NOT_MEASURED}: no result file was given to `audiox bench report`.\n")
    spans = generated_blocks(existing)
    replaced = sorted((spans[k] + (block_text(k, body), k) for k, body in blocks if k in spans))
    out, pos = [], 0
    for start, end, text, _ in replaced:
        out += [existing[pos:start], text]
        pos = end
    out.append(existing[pos:])
    text = "".join(out)
    appended = [(k, body) for k, body in blocks if k not in spans]
    if appended:
        text = text.rstrip() + "\n\n" + "\n\n".join(block_text(k, b) for k, b in appended) + "\n"
    return text, [k for *_, k in replaced], [k for k, _ in appended]


def write_markdown(md_path: Path, blocks: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Splices `blocks` into `md_path` (created when missing; written through a temporary file,
    so it is never half-written); returns (keys replaced, keys appended)."""
    md_path = Path(md_path)
    existing = md_path.read_text() if md_path.exists() else None
    text, replaced, appended = splice_generated(existing, blocks)
    if text != existing:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(md_path) as tmp, open(tmp, "w") as f:
            f.write(text)
    return replaced, appended
