"""Command line: `bench`, `bench report`, `profile`.

    bench [--suite kernels|dit|loops|e2e|headline|throughput|cpu|all] [--preset P] [--smoke] [--out results.json]
          [--backends ...] [--time-budget-s S]
    bench report RESULTS.json... [--md BENCHMARKS.md] [--plots DIR] [--compare OLD NEW --threshold 0.05]
    profile [--preset P] [--out trace.json]

`main(argv)` takes the command name first (argv = ["bench", ...] or ["profile", ...]);
`bench_main` and `profile_main` take what follows it. Run as `python -m audiox_engine.benchmarks ...`.
Exit codes: 0 ok, 1 a regression found by --compare, 2 bad input (unreadable or
invalid result file, runs from different cards, unknown option), 3 some benchmark rows
failed with an error (recorded as "FAILED: ..." under `skipped`; the others ran), 130
interrupted (SIGINT; the file keeps every finished row, with "complete": false).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from audiox_engine.benchmarks import charts, compare, report, results
from audiox_engine.benchmarks.suites import HEADLINE_TEACHER_STEPS, SUITES, BenchConfig, run_suite
from audiox_engine.benchmarks.workloads import BACKENDS, WorkloadUnavailable


def _bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Run benchmark suites and write a result JSON.")
    p.add_argument("--suite", choices=(*SUITES, "all"), default="headline")
    p.add_argument("--preset", default=None, help="model preset (default: audiox-turbo; tiny with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny preset, teacher steps / 25, 2 repetitions: checks the harness in < 60 s on CPU")
    p.add_argument("--out", default="results.json", help="result file, rewritten after every entry")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {','.join(BACKENDS)}")
    p.add_argument("--teacher-steps", default=",".join(map(str, HEADLINE_TEACHER_STEPS)),
                   help="comma-separated teacher step counts (scaled down by 25 under --smoke)")
    p.add_argument("--budget-s", type=float, default=None, help="steady-state seconds per entry (sets reps)")
    p.add_argument("--reps", type=int, default=None, help="fixed repetitions (overrides --budget-s)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls after the first call")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="seconds for the whole run: rows not started by then are recorded as skipped")
    p.add_argument("--depth", type=int, default=None, help="DiT blocks for --suite cpu (default: the preset's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest for tiny CPU smoke runs on a busy machine)")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench report", description="Result JSON files -> markdown tables and plots.")
    p.add_argument("results", nargs="*", help="result JSON files")
    p.add_argument("--md", default=None, help="markdown file to update between the generated-block markers")
    p.add_argument("--plots", default=None, help="directory for PNG plots")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two runs from the same card")
    p.add_argument("--threshold", type=float, default=compare.DEFAULT_THRESHOLD,
                   help="relative median slowdown counted as a regression (default 0.05)")
    return p


def _profile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profile", description="Chrome trace of one generation (torch.profiler).")
    p.add_argument("--preset", default="audiox-turbo")
    p.add_argument("--out", default="trace.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--mode", choices=("turbo", "teacher"), default="turbo")
    p.add_argument("--steps", type=int, default=None, help="default: 4 for turbo, 250 for teacher")
    return p


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"bench: {what} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise SystemExit(f"bench: {what} is empty")
    return vals


def bench_main(argv: list[str]) -> int:
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    args = _bench_parser().parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    overrides = {"suite": args.suite, "device": args.device, "batch": args.batch, "backends": backends,
                 "teacher_steps": _int_list(args.teacher_steps, "--teacher-steps"), "out": args.out}
    if args.preset:
        overrides["preset"] = args.preset
    for key in ("budget_s", "reps", "warmup", "threads", "time_budget_s", "depth"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    try:
        config = BenchConfig.smoke_defaults(**overrides) if args.smoke else BenchConfig(**overrides)
        run = run_suite(config)
    except (ValueError, WorkloadUnavailable) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bench: interrupted; finished rows are in {args.out}", file=sys.stderr)
        return 130
    failed = [s for s in run["skipped"] if s["reason"].startswith("FAILED:")]
    print(f"bench: {len(run['entries'])} entries, {len(run['skipped'])} skipped "
          f"({len(failed)} failed) -> {args.out}")
    return 3 if failed else 0


def report_main(argv: list[str]) -> int:
    args = _report_parser().parse_args(argv)
    try:
        if args.compare:
            old, new = (results.load(p) for p in args.compare)
            md, regressions = compare.compare(old, new, args.threshold)
            print(md)
            if regressions:
                print(f"bench report: {len(regressions)} regression(s) beyond {100 * args.threshold:.1f}%",
                      file=sys.stderr)
                return 1
            if not args.results:
                return 0
        runs = [results.load(p) for p in args.results]
    except (results.ResultsError, compare.ComparisonError, ValueError) as exc:
        print(f"bench report: {exc}", file=sys.stderr)
        return 2
    plots = None
    md_path = Path(args.md) if args.md else None
    if args.plots:
        stems = [Path(p).stem for p in args.results]
        plots = charts.make_plots(runs, Path(args.plots), md_path, stems)
    text = report.render_markdown(runs, plots)
    if md_path is not None:
        try:
            report.write_markdown(md_path, text)
        except ValueError as exc:
            print(f"bench report: {md_path}: {exc}", file=sys.stderr)
            return 2
        print(f"bench report: wrote {md_path}")
    else:
        print(text)
    return 0


def profile_main(argv: list[str]) -> int:
    from audiox_engine.benchmarks.profiler import profile_generation

    args = _profile_parser().parse_args(argv)
    steps = args.steps or (4 if args.mode == "turbo" else HEADLINE_TEACHER_STEPS[0])
    try:
        info = profile_generation(args.preset, args.device, args.out, mode=args.mode, steps=steps)
    except WorkloadUnavailable as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {"bench": bench_main, "profile": profile_main, "report": report_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m audiox_engine.benchmarks {bench|profile} ...  (bench report ... for reports)", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
