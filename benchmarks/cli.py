"""Command line: `audiox bench`, `audiox bench report`, `audiox profile`.

    audiox bench [--suite kernels|dit|loops|e2e|headline|throughput|cpu|all] [--preset P] [--smoke]
                 [--out results.json] [--device cpu|cuda|cuda:N|auto] [--backends ...] [--time-budget-s S]
    audiox bench report RESULTS.json... [--md BENCHMARKS.md] [--plots DIR] [--compare OLD NEW --threshold 0.05]
    audiox profile [--preset P] [--out trace.json]

`python -m audiox_engine.benchmarks ...` runs the same commands, so every message and usage
line names them as `audiox ...`. `main(argv)` takes the command name first (argv = ["bench",
...] or ["profile", ...]); `bench_main` and `profile_main` take what follows it.

Preset: without `--preset` the full-size `audiox-turbo` runs on a CUDA device; on the CPU the
`tiny` preset runs instead, said in one line on stderr (the cpu suite, which measures the
full width, excepted), and a full-size preset on the CPU gets a one-line note of its cost
(`full_size_note`). Every long phase (building a
model, each row, each kernel module) prints a line on stderr as it starts.

Exit codes: 0 ok, 1 a regression found by --compare, 2 bad input, said in one line (unknown
option, suite, preset or backend, bad --device, an unwritable output, an unreadable or invalid
result file, runs from different cards, a broken generated block in the markdown), 3 some
benchmark rows failed with an error (recorded as "FAILED: ..." under `skipped`; the others
ran), 130 interrupted (Ctrl-C / SIGINT; a result file keeps every finished row, with
"complete": false).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.errors import ConfigError
from audiox_engine.benchmarks import charts, compare, report, results, workloads
from audiox_engine.benchmarks.suites import HEADLINE_TEACHER_STEPS, SUITES, BenchConfig, run_suite
from audiox_engine.benchmarks.workloads import BACKENDS, COMPILE_MODES, WorkloadUnavailable

PROGS = {"bench": "audiox bench", "report": "audiox bench report", "profile": "audiox profile"}
FULL_PRESET = "audiox-turbo"
CPU_PRESET = "tiny"
# Weights of the full-size model in fp32 (2.22 B DiT parameters; 2.83 B with the conditioners,
# the VAE and the Synchformer): tests/benchmarks/test_bench_cli.py counts them.
FULL_DIT_GB = 9
FULL_PIPELINE_GB = 11
DIT_ONLY_SUITES = ("dit", "loops", "cpu")  # the other model suites build the whole pipeline
NO_MODEL_SUITES = ("kernels",)
# What the full-size model costs on a CPU, as measured on 2 cores (benchmarks/README.md has the
# figures); a row is 5 or more calls of its workload.
CPU_MEASURED = "on 2 cores one DiT forward took 6-9 s, one Turbo generation 49 s"
CPU_COST = {"dit": "about half a minute per row", "throughput": "minutes per row",
            "profile": "17 GB of memory at the peak and about 3 minutes",
            "cpu": "8-12 minutes at --depth 12 and twice that at the preset's 24 blocks, where the "
                   "eager, fp32 engine and bf16 engine copies of the DiT need over 24 GB of memory "
                   "(--backends eager,engine-bf16 leaves the fp32 engine out)"}
CPU_COST_ROWS = "minutes per Turbo row, hours per 250-step teacher row"


class UsageError(ValueError):
    """Bad input to a command; its message is the one line printed."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, raised rather than printed with the usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


def _bench_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROGS["bench"], description="Run benchmark suites and write a result JSON "
                "(`audiox bench report --help` for the tables).")
    p.add_argument("--suite", choices=(*SUITES, "all"), default="headline")
    p.add_argument("--preset", default=None,
                   help=f"model preset (default: {FULL_PRESET} on a CUDA device, {CPU_PRESET} on the CPU "
                        "and with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny preset, teacher steps / 25, 2 repetitions, and on the CPU no torch.compile rows "
                        "unless --backends names them: checks the harness, says nothing about speed (on 2 "
                        "x86 cores: headline 19 s, all suites 30 s; about 3x that with other jobs on the cores)")
    p.add_argument("--out", default="results.json", help="result file, rewritten after every entry")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when there is one)")
    p.add_argument("--batch", type=_count(1), default=1)
    p.add_argument("--backends", default=None,
                   help=f"comma-separated subset of {','.join(BACKENDS)} (default: all of them; under --smoke on "
                        "the CPU all but the torch.compile ones)")
    p.add_argument("--teacher-steps", default=",".join(map(str, HEADLINE_TEACHER_STEPS)),
                   help="comma-separated teacher step counts (scaled down by 25 under --smoke)")
    p.add_argument("--budget-s", type=_seconds, default=None, help="steady-state seconds per entry (sets reps)")
    p.add_argument("--reps", type=_count(1), default=None, help="fixed repetitions (overrides --budget-s)")
    p.add_argument("--warmup", type=_count(0), default=None, help="warm-up calls after the first call")
    p.add_argument("--time-budget-s", type=_seconds, default=None,
                   help="seconds for the whole run: rows not started by then are recorded as skipped")
    p.add_argument("--depth", type=_count(1), default=None, help="DiT blocks for --suite cpu (default: the preset's)")
    p.add_argument("--threads", type=_count(1), default=None,
                   help="torch CPU threads (1 is fastest for tiny CPU smoke runs on a busy machine)")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROGS["report"], description="Result JSON files -> markdown tables and plots.")
    p.add_argument("results", nargs="*", help="result JSON files")
    p.add_argument("--md", default=None,
                   help="markdown file to update: each run's generated block (keyed by suite, card and preset) is "
                        "replaced, or appended when new; other blocks and prose are kept")
    p.add_argument("--plots", default=None, help="directory for PNG plots")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two runs from the same card")
    p.add_argument("--threshold", type=float, default=compare.DEFAULT_THRESHOLD,
                   help="relative median slowdown counted as a regression (default 0.05)")
    return p


def _profile_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROGS["profile"], description="Chrome trace of one warm generation (torch.profiler).")
    p.add_argument("--preset", default=None,
                   help=f"model preset (default: {FULL_PRESET} on a CUDA device, {CPU_PRESET} on the CPU)")
    p.add_argument("--out", default="trace.json")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when there is one)")
    p.add_argument("--mode", choices=("turbo", "teacher"), default="turbo")
    p.add_argument("--steps", type=_count(1), default=None, help="default: 4 for turbo, 250 for teacher")
    return p


# ---------------------------------------------------------------- checks of the arguments


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} must be comma-separated integers >= 1, got {text!r}")
    return values


def resolve_device(text: str) -> torch.device:
    """--device as a torch.device (cpu or cuda); UsageError naming what is wrong."""
    try:
        dev = workloads.resolve_device(text)
    except WorkloadUnavailable:
        raise UsageError(f"--device {text}: this machine has no CUDA device torch can use; give --device cpu") from None
    except RuntimeError:
        raise UsageError(f"--device {text!r}: expected cuda, cuda:N, cpu or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text!r}: expected cuda, cuda:N, cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return dev


def check_preset(name: str) -> None:
    try:
        get_preset(name)
    except ConfigError as exc:
        raise UsageError(f"--preset: {exc}") from None


def check_writable(path: str, flag: str) -> None:
    """UsageError unless a file can be written at `path` (its folder is created when missing)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None


def _cpu_cost(suite: str) -> tuple[int, str]:
    """(GB of fp32 weights, what a run costs in time) of the full-size model on a CPU."""
    return (FULL_DIT_GB if suite in DIT_ONLY_SUITES else FULL_PIPELINE_GB), CPU_COST.get(suite, CPU_COST_ROWS)


def full_size_note(prog: str, preset: str, suite: str) -> str:
    """The one line said before a full-size preset runs on the CPU: what it costs."""
    gb, cost = _cpu_cost(suite)
    bound = "; --time-budget-s S stops starting rows after S s" if suite != "profile" else ""
    return f"{prog}: note: preset {preset} on the CPU: ~{gb} GB of weights per model, {cost} ({CPU_MEASURED}){bound}"


def choose_preset(prog: str, preset: str | None, device: torch.device, smoke: bool, suite: str) -> str:
    """The preset to run (`preset`, already checked, when given): else tiny under --smoke or on the
    CPU (said on stderr), else the full-size model; the cpu suite runs the full-size model (with
    `--depth` for fewer blocks) unless --smoke. A full-size preset given for the CPU gets its
    cost said on stderr. `suite` is a bench suite, or "profile"."""
    uses_model = suite not in NO_MODEL_SUITES
    if preset is not None:
        if device.type == "cpu" and preset != CPU_PRESET and uses_model:
            print(full_size_note(prog, preset, suite), file=sys.stderr)
        return preset
    if smoke:
        return CPU_PRESET
    if suite == "cpu":  # the CPU suite measures the full width: its point is the real shapes
        print(full_size_note(prog, FULL_PRESET, suite), file=sys.stderr)
        return FULL_PRESET
    if device.type == "cpu":
        if uses_model:
            why = "no CUDA device" if not torch.cuda.is_available() else "--device cpu"
            gb, cost = _cpu_cost(suite)
            print(f"{prog}: {why}: using the {CPU_PRESET} preset (give --preset {FULL_PRESET} for the full model: "
                  f"~{gb} GB of weights, {cost} on a CPU)", file=sys.stderr)
        return CPU_PRESET
    return FULL_PRESET


def _parse(parser: argparse.ArgumentParser, argv: list[str]):
    """(args, None), or (None, exit status) after --help."""
    try:
        return parser.parse_args(argv), None
    except SystemExit as exc:  # --help, which argparse ends with SystemExit(0)
        return None, exc.code if isinstance(exc.code, int) else 0


# ---------------------------------------------------------------- bench


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The run's BenchConfig from `audiox bench` arguments; UsageError / ValueError on bad input."""
    device = resolve_device(args.device)
    if args.backends is None:
        drop = COMPILE_MODES if args.smoke and device.type == "cpu" else ()
        backends = tuple(b for b in BACKENDS if b not in drop)
    else:
        backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or not backends:
            raise UsageError(f"--backends: unknown backend(s) {unknown or [args.backends]}; "
                             f"expected some of {','.join(BACKENDS)}")
    teacher = _int_list(args.teacher_steps, "--teacher-steps")
    if args.preset is not None:
        check_preset(args.preset)
    check_writable(args.out, "--out")
    overrides = {"suite": args.suite, "device": args.device, "batch": args.batch, "backends": backends,
                 "teacher_steps": teacher, "out": args.out,
                 "preset": choose_preset(PROGS["bench"], args.preset, device, args.smoke, args.suite)}
    for key in ("budget_s", "reps", "warmup", "threads", "time_budget_s", "depth"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return BenchConfig.smoke_defaults(**overrides) if args.smoke else BenchConfig(**overrides)


def bench_main(argv: list[str]) -> int:
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    prog = PROGS["bench"]
    try:
        args, status = _parse(_bench_parser(), argv)
        if args is None:
            return status
        config = bench_config(args)
    except ValueError as exc:  # UsageError, and BenchConfig's own checks
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    try:
        run = run_suite(config)
    except (ValueError, WorkloadUnavailable, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = Path(args.out)
        saved = out.exists() and out.stat().st_mtime >= started - 1  # written by this run (1 s: mtime's resolution)
        kept = f"the rows finished so far are in {out} (\"complete\": false)" if saved else "nothing was measured yet"
        print(f"{prog}: interrupted: {kept}", file=sys.stderr)
        return 130
    failed = [s for s in run["skipped"] if s["reason"].startswith("FAILED:")]
    print(f"{prog}: {len(run['entries'])} entries, {len(run['skipped'])} skipped "
          f"({len(failed)} failed) -> {args.out}")
    return 3 if failed else 0


# ---------------------------------------------------------------- bench report


def _load(path: str) -> dict:
    """results.load, its error in one line: the first problem, and how many more there are."""
    try:
        return results.load(path)
    except UnicodeDecodeError:
        raise results.ResultsError(f"{path}: not a result file (not UTF-8 text)") from None
    except results.ResultsError as exc:
        head, *problems = str(exc).splitlines()
        if not problems:
            raise
        more = f" (and {len(problems) - 1} more: check it with results.load)" if len(problems) > 1 else ""
        raise results.ResultsError(f"{head} {problems[0].strip()}{more}") from None


def _check_distinct(paths: list[str], runs: list[dict]) -> None:
    """Two files of the same run identity would write the same generated block: refused."""
    seen: dict[str, str] = {}
    for path, run in zip(paths, runs):
        key = report.run_key(run)
        if key in seen:
            raise UsageError(f"{seen[key]} and {path} are both the run '{key}' (one generated block each): "
                             "give one of them")
        seen[key] = path


def report_main(argv: list[str]) -> int:
    prog = PROGS["report"]
    try:
        args, status = _parse(_report_parser(), argv)
        if args is None:
            return status
        if args.md:
            check_writable(args.md, "--md")
        if args.compare:
            old, new = (_load(p) for p in args.compare)
            md, regressions = compare.compare(old, new, args.threshold)
            print(md)
            if regressions:
                print(f"{prog}: {len(regressions)} regression(s) beyond {100 * args.threshold:.1f}%",
                      file=sys.stderr)
                return 1
            if not args.results:
                return 0
        runs = [_load(p) for p in args.results]
        _check_distinct(args.results, runs)
        md_path = Path(args.md) if args.md else None
        plots = None
        if args.plots:
            plots = charts.make_plots(runs, Path(args.plots), md_path, [Path(p).stem for p in args.results])
        if md_path is None:
            print(report.render_markdown(runs, plots))
            return 0
        existed = md_path.exists()
        replaced, appended = report.write_markdown(md_path, report.render_blocks(runs, plots))
    except report.GeneratedBlockError as exc:
        print(f"{prog}: error: {args.md}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # UsageError, ResultsError, ComparisonError; a file not written
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if runs:
        print(f"{prog}: {md_path}: {len(replaced)} generated block(s) replaced, {len(appended)} appended; "
              "other blocks and prose kept")
    else:
        print(f"{prog}: no result file given: {md_path} " + ("left as it was" if existed else "written, saying so"))
    return 0


# ---------------------------------------------------------------- profile


def profile_main(argv: list[str]) -> int:
    from audiox_engine.benchmarks.profiler import profile_generation

    prog = PROGS["profile"]
    try:
        args, status = _parse(_profile_parser(), argv)
        if args is None:
            return status
        device = resolve_device(args.device)
        if args.preset is not None:
            check_preset(args.preset)
        check_writable(args.out, "--out")
        preset = choose_preset(prog, args.preset, device, smoke=False, suite="profile")
        steps = args.steps or (4 if args.mode == "turbo" else HEADLINE_TEACHER_STEPS[0])
        info = profile_generation(preset, device, args.out, mode=args.mode, steps=steps,
                                  progress=lambda line: print(f"{prog}: {line}", file=sys.stderr, flush=True))
    except (ValueError, WorkloadUnavailable, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {"bench": bench_main, "profile": profile_main, "report": report_main}
    if not argv or argv[0] not in commands:
        print("usage: audiox {bench|profile} ...  (audiox bench report ... for reports; audiox bench --help)",
              file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except KeyboardInterrupt:
        print(f"{PROGS[argv[0]]}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
