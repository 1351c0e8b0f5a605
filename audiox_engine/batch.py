"""``audiox generate --prompts FILE.jsonl --out DIR``: many clips from one model load, on one
process or many (``torchrun``), resumable.

The prompt file holds one JSON object per line: ``id`` (required; it names the output file)
and any of ``prompt``, ``video``, ``audio`` (paths relative to the prompt file's folder),
``seconds`` and ``seed`` (the run's ``--seconds`` and ``--seed`` otherwise). Each item gets
its own generator seeded with its seed, so its clip depends on its seed and inputs and never
on which batch or process made it:

- conditioning (text / video / audio prompt, the audio prompt's random mask and posterior
  draw) is computed per item, with its generator; a file that cannot be read fails that item
  alone;
- the sampler runs the batch, each row's noise drawn from its item's generator
  (``AudioXPipeline.sample`` with a list of generators);
- every batch is padded to ``--batch-size`` rows (copies of its first item, with generators of
  their own, discarded): on CPU fp32 the DiT's rows came out bit-identical whatever their
  position or neighbours in a batch of a given size, but not across sizes (matrix products
  are blocked by size), so a fixed size keeps an item's bits independent of how the file was
  split;
- each clip is decoded alone (the ``tiny`` preset's DDSP decoder draws its noise excitation
  per batch row, and CPU convolutions round differently with the batch's shape).

On CPU the result also depends on the threads per process (the decoder's convolutions round
differently with 1 and 2 threads): runs with the same ``--batch-size`` and threads per
process give byte-identical files per id whatever their world size or order (tested).

Output: ``DIR/<id>.wav`` (or ``--format``), written atomically, and one line per finished
item in ``DIR/manifest.jsonl``. While running, each rank appends its lines to
``DIR/manifest.rank<R>.jsonl`` (flushed and synced per line); at the end rank 0 merges them
into ``manifest.jsonl``. A rerun skips every id that has a manifest line (merged or in a
part) and its file; anything else is made again. Exit status: 0 all done, 1 some lines or
items failed (each reported with its line number; the others finished), 2 refused before
any work (bad flags, duplicate or unsafe ids), 130 interrupted.

Distributed (``torchrun``): every rank reads the file; rank 0 takes the snapshot of finished
ids and broadcasts it; the ids still to make are dealt out in file order, rank r taking every
world-size-th from the r-th. Ranks exchange only small Python objects (gloo), each generating
on its own device (``cuda:LOCAL_RANK`` with ``--device cuda``, else the CPU). ``DIR`` must be
one folder all ranks see (checked before any work).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass

from audiox_engine.audiox.errors import ArgumentError
from audiox_engine.batch_io import Group, Journal, finished_records, merge_manifest, remove_stale_temporaries
from audiox_engine.batch_prompts import Failure, Item, long_prompts, read_prompts

__all__ = ["add_batch_arguments", "check_no_batch_flags", "run_batch", "plan_batch", "BatchPlan", "weights_digest"]

FORMATS = ("wav", "flac", "ogg", "mp3")


def add_batch_arguments(p) -> None:
    """The ``generate`` flags of batch mode."""
    p.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                   help="many clips: one JSON object per line with 'id' and any of 'prompt', 'video', 'audio' "
                        "(paths relative to the file), 'seconds', 'seed' (default: --seconds, --seed); "
                        "writes --out DIR/<id>.wav and DIR/manifest.jsonl; a rerun skips finished ids")
    p.add_argument("--out", default=None, metavar="DIR", help="with --prompts: the output folder")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="with --prompts: clips sampled together (default 1; each clip's bits depend on it on CPU)")
    p.add_argument("--format", choices=FORMATS, default=None, help="with --prompts: output format (default wav)")


def check_no_batch_flags(args) -> None:
    """One clip (no --prompts): refuse the flags of batch mode."""
    given = [f for f, v in (("--out", args.out), ("--batch-size", args.batch_size), ("--format", args.format))
             if v is not None]
    if given:
        raise ArgumentError(f"{', '.join(given)} {'go' if len(given) > 1 else 'goes'} with --prompts FILE.jsonl "
                            "(one clip: -o FILE)")


# ----------------------------------------------------------------------------- the plan


@dataclass
class BatchPlan:
    """A run's checked flags, its items and the lines that are not items."""

    model: dict
    items: list[Item]
    failures: list[Failure]
    out: str
    extension: str
    batch_size: int
    mode: str
    steps: int
    cfg_scale: float


def _check_out_dir(out: str) -> str:
    """``--out`` as an absolute path, created if missing, where a file can really be created."""
    import tempfile

    if os.path.exists(out) and not os.path.isdir(out):
        raise ArgumentError(f"--out {out} is a file: give a folder (created if missing)")
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".audiox-write-check-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ArgumentError(f"--out {out}: cannot write there ({e.strerror}): choose another folder") from None
    return os.path.abspath(out)


def plan_batch(args, group: Group, model_plan) -> BatchPlan:
    """Everything that can be checked without the model; AudioXError (ArgumentError mostly) otherwise."""
    from audiox_engine.audiox.arguments import check_generation_args
    from audiox_engine.audiox.errors import as_int
    from audiox_engine.audiox.media import output_format
    from audiox_engine.audiox.pipeline import SYNCHFORMER_FILE, find_synchformer, missing_synchformer_message

    single = [f for f, v in (("--prompt", args.prompt), ("--video", args.video), ("--audio", args.audio),
                             ("--video-sync", args.video_sync), ("-o", args.output)) if v is not None]
    single += ["--batch"] * (args.batch != 1) + ["--force"] * args.force
    if single:
        raise ArgumentError(f"{', '.join(single)}: not with --prompts (each line gives its inputs; --out DIR, "
                            "--batch-size N; finished ids are skipped, never overwritten)")
    if args.out is None:
        raise ArgumentError("--prompts needs --out DIR, the folder for the clips and manifest.jsonl")
    if args.zero_sync and args.synchformer is not None:
        raise ArgumentError("give either --synchformer or --zero-sync, not both")
    if args.synchformer is not None and not os.path.isfile(args.synchformer):
        raise ArgumentError(f"--synchformer: file not found: {args.synchformer}")
    batch_size = as_int("--batch-size", 1 if args.batch_size is None else args.batch_size, minimum=1)
    extension = "." + (args.format or "wav")
    output_format("clip" + extension)  # MediaError when this machine cannot write it
    model = model_plan(args)
    model["device"] = _rank_device(args, model["device"], group)
    mode = "teacher" if args.teacher else "turbo"
    defaults = check_generation_args(model["cfg"], seconds=args.seconds, steps=args.steps, cfg_scale=args.cfg,
                                     mode=mode, generator=args.seed, device=model["device"])
    items, failures = read_prompts(args.prompts, model["cfg"], {"seed": args.seed, "seconds": args.seconds})
    t5_dir = args.t5 or (os.path.join(model["folder"], "t5-base") if model["folder"] is not None else None)
    items, too_long = long_prompts(items, t5_dir, args.strict, warn=group.rank == 0)
    video = any(it.video is not None for it in items)
    if (video and not args.zero_sync and args.synchformer is None and model["kind"] == "folder"
            and find_synchformer(model["model"]) is None):
        raise ArgumentError(missing_synchformer_message(os.path.join(model["model"], SYNCHFORMER_FILE)))
    return BatchPlan(model, items, sorted(failures + too_long, key=lambda f: f.line), _check_out_dir(args.out),
                     extension, batch_size, mode, defaults.steps, defaults.cfg_scale)


# ----------------------------------------------------------------------------- running


def weights_digest(pipe) -> str:
    """sha256 of the weights as loaded (names, dtypes, shapes and bytes, in name order), the
    Synchformer's included: it names what made a clip, whatever file it came from."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    modules = [("model.", pipe.model)] + ([("synchformer.", pipe.synchformer)] if pipe.synchformer is not None else [])
    for prefix, module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{prefix}{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class _OnceFilter(logging.Filter):
    """Each distinct warning once (a per-item warning would otherwise repeat for every item)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record) -> bool:
        message = record.getMessage()
        new = message not in self.seen
        self.seen.add(message)
        return new


@contextlib.contextmanager
def _each_warning_once():
    """The project's warnings (through the command's handlers) each once while the batch runs."""
    handlers = logging.getLogger("audiox_engine").handlers
    once = _OnceFilter()
    for handler in handlers:
        handler.addFilter(once)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)


class _Maker:
    """Makes the items of one rank, a batch at a time, and journals each finished one."""

    def __init__(self, pipe, plan: BatchPlan, args, journal: Journal, facts: dict):
        self.pipe, self.plan, self.args, self.journal, self.facts = pipe, plan, args, journal, facts
        self.failures: list[Failure] = []
        self.made = 0

    def _fail(self, it: Item, error: BaseException) -> None:
        from tqdm import tqdm

        text = str(error).strip().splitlines()
        failure = Failure(it.line, it.id, text[0] if text else type(error).__name__)
        self.failures.append(failure)
        tqdm.write(f"audiox: error: {failure}", file=sys.stderr)  # above the progress bars

    def run_batch(self, items: list[Item], bar) -> None:
        import torch

        from audiox_engine.audiox.sampling import make_generator

        pipe, plan, device = self.pipe, self.plan, self.pipe.device
        conds, ready = [], []
        for it in items:
            start = time.perf_counter()
            generator = make_generator(it.seed, device)
            try:
                conds.append(pipe.encode_conditioning(
                    it.prompt, video=it.video, video_sync="zeros" if self.args.zero_sync else None, audio=it.audio,
                    generator=generator, mask_audio_prompt=not self.args.no_mask_audio_prompt))
                ready.append((it, generator, time.perf_counter() - start))
            except Exception as e:  # noqa: BLE001 (any failure of one item's inputs fails that item alone)
                self._fail(it, e)
                bar.update(1)
        if not ready:
            return
        pad = plan.batch_size - len(ready)
        generators = [g for _, g, _ in ready] + [make_generator(0, device) for _ in range(pad)]
        start = time.perf_counter()
        try:
            latents = pipe.sample(torch.cat(conds + conds[:1] * pad), steps=plan.steps, mode=plan.mode,
                                  cfg_scale=plan.cfg_scale if plan.mode == "teacher" else None, generator=generators)
        except Exception as e:  # noqa: BLE001
            for it, _, _ in ready:
                self._fail(it, e)
            bar.update(len(ready))
            return
        sampling_share = (time.perf_counter() - start) / len(ready)
        for (it, _, conditioning_s), row in zip(ready, latents):
            start = time.perf_counter()
            try:
                self._write(it, row, conditioning_s + sampling_share, start)
                self.made += 1
            except Exception as e:  # noqa: BLE001
                self._fail(it, e)
            bar.update(1)

    def _write(self, it: Item, latent, earlier_s: float, start: float) -> None:
        from audiox_engine.audiox.media import write_audio

        clip = self.pipe.decode(latent[None], it.seconds)[0]
        if self.args.normalize == "peak":
            clip = clip / clip.abs().max().clamp_min(1e-12)
        name = it.id + self.plan.extension
        write_audio(os.path.join(self.plan.out, name), clip, self.pipe.cfg.sample_rate)
        self.journal.append({"id": it.id, "line": it.line, "file": name, "seed": it.seed, "seconds": it.seconds,
                             **self.facts, "wall_s": round(earlier_s + time.perf_counter() - start, 4)})


def _rank_device(args, device, group: Group):
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``--device cuda`` under torchrun."""
    from audiox_engine.audiox.arguments import check_device

    if device.type != "cuda" or not group.launched:
        return device
    if device.index is not None and group.world > 1:
        raise ArgumentError(f"--device {args.device} under torchrun: each rank takes cuda:LOCAL_RANK; "
                            "give --device cuda")
    return check_device(f"cuda:{group.local_rank}")


def run_batch(args, model_plan, load_pipeline, report_error) -> int:
    """``audiox generate --prompts ...``: the exit status (see the module docstring).

    ``model_plan(args)``, ``load_pipeline(args, plan)`` and ``report_error(error) -> status`` are
    the command's: the model of ``--model`` / ``--t5`` / ``--device`` / ``--dtype`` checked
    without building it, then loaded, and a bad input's one line."""
    group = Group.from_environment()
    group.start()
    try:
        try:
            plan = _agreed_plan(args, group, model_plan)
        except (ValueError, OSError) as e:  # a refusal, the same on every rank
            status = report_error(e) if group.rank == 0 else 2
            group.gather(None)  # nobody exits (and torchrun stops the rest) before rank 0 has said why
            return status
        return _run(args, plan, group, load_pipeline)
    finally:
        group.stop()


def _agreed_plan(args, group: Group, model_plan) -> BatchPlan:
    """Every rank's plan, or one refusal for all: rank 0's error when every rank failed the same
    way, else each distinct error with the ranks that met it (a file one machine lacks, a GPU it
    does not have). The output folder must be one that every rank sees."""
    plan = error = None
    try:
        plan = plan_batch(args, group, model_plan)
    except (ValueError, OSError) as e:  # the project's named errors, the command's UsageError
        error = e
    messages = group.gather(None if error is None else str(error).strip().splitlines()[0])
    failed: dict[str, list[int]] = {}
    for rank, message in enumerate(messages):
        if message is not None:
            failed.setdefault(message, []).append(rank)
    if error is not None and failed == {messages[0]: list(range(group.world))}:
        raise error
    if failed:
        raise ArgumentError("; ".join(f"rank {', '.join(map(str, ranks))}: {m}" for m, ranks in failed.items()))
    unseen = group.check_shared_folder(plan.out)
    if unseen:
        group.remove_shared_marker()
        raise ArgumentError(f"--out {plan.out}: rank(s) {', '.join(map(str, unseen))} do not see what rank 0 writes "
                            "there: give a folder every rank sees (a shared file system)")
    return plan


def _snapshot(plan: BatchPlan, group: Group) -> set[str]:
    """Rank 0's list of finished ids, on every rank (after it removed what killed runs left)."""
    done = None
    if group.rank == 0:
        for f in plan.failures:
            print(f"audiox: error: {f}", file=sys.stderr)
        done = set(finished_records(plan.out))
        remove_stale_temporaries(plan.out, [it.id + plan.extension for it in plan.items if it.id not in done])
    return group.broadcast(done)


def _load(args, plan: BatchPlan, group: Group, load_pipeline, to_make: int):
    """The pipeline of this rank (engine-accelerated with --accelerate) and the weights' digest."""
    import torch

    device = plan.model["device"]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    pipe = load_pipeline(args, plan.model)
    digest = group.broadcast(weights_digest(pipe) if group.rank == 0 else None)
    if args.accelerate:
        from audiox_engine import engine

        pipe = engine.accelerate(pipe, dtype=plan.model["dtype"])
    if group.rank == 0 and not args.quiet:
        if not pipe.trained:
            print(f"audiox: note: {pipe.source.detail}: the output is noise-like, not real audio", file=sys.stderr)
        print(f"audiox: {len(plan.items) + len(plan.failures)} lines: {len(plan.items) - to_make} already done, "
              f"{to_make} to make on {group.world} process(es), batch size {plan.batch_size}, {device}",
              file=sys.stderr)
    return pipe, digest


def _make(args, plan: BatchPlan, group: Group, pipe, digest: str, mine: list[Item]) -> tuple[int, list[Failure]]:
    """This rank's items, a batch at a time: (how many were made, what failed)."""
    import torch
    from tqdm.auto import tqdm

    facts = {"model": plan.model["model"], "weights_sha256": digest, "mode": plan.mode, "steps": plan.steps,
             "batch_size": plan.batch_size, "device": str(pipe.device),
             "dtype": str(plan.model["dtype"]).split(".")[-1], "threads": torch.get_num_threads(),
             "normalize": args.normalize}
    if plan.mode == "teacher":
        facts["cfg_scale"] = plan.cfg_scale
    # no_grad as AudioXPipeline.__call__: some CPU kernels round differently when autograd records.
    with Journal(plan.out, group.rank) as journal, _each_warning_once(), torch.no_grad():
        maker = _Maker(pipe, plan, args, journal, facts)
        with tqdm(total=len(mine), unit="clip", desc=f"rank {group.rank}" if group.world > 1 else "generate",
                  position=group.local_rank if group.world > 1 else None, disable=args.quiet,
                  file=sys.stderr) as bar:
            for start in range(0, len(mine), plan.batch_size):
                maker.run_batch(mine[start:start + plan.batch_size], bar)
    return maker.made, maker.failures


def _run(args, plan: BatchPlan, group: Group, load_pipeline) -> int:
    done = _snapshot(plan, group)
    todo = [it for it in plan.items if it.id not in done]
    mine = todo[group.rank::group.world]
    report = (0, [])
    if todo:  # the same on every rank: all load the model, or none does
        pipe, digest = _load(args, plan, group, load_pipeline, len(todo))
        report = _make(args, plan, group, pipe, digest, mine) if mine else report
    reports = group.gather(report)
    made = sum(r[0] for r in reports)
    failures = sorted(plan.failures + [f for r in reports for f in r[1]], key=lambda f: f.line)
    if group.rank == 0:
        listed = merge_manifest(plan.out)
        group.remove_shared_marker()
        _summary(plan, len(plan.items) - len(todo), made, failures, listed)
    group.gather(None)  # nobody exits (and torchrun stops the rest) before rank 0 has merged
    return 1 if failures else 0


def _summary(plan: BatchPlan, skipped: int, made: int, failures: list[Failure], listed: int) -> None:
    manifest = os.path.join(plan.out, "manifest.jsonl")
    print(f"audiox: {made} made, {skipped} already done, {len(failures)} failed; {manifest} lists {listed} clip(s)")
    if failures:
        print(f"audiox: failed ({len(failures)}; fix them and rerun: finished ids are skipped):", file=sys.stderr)
        for f in failures:
            print(f"audiox:   {f}", file=sys.stderr)
