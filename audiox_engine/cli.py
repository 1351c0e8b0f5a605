"""The ``audiox`` command (``python -m audiox_engine`` runs the same).

    audiox generate --prompt "a loud square tone at 523 Hz" -o tone.wav   # embedded tiny model
    audiox generate --prompt "..." --video clip.mp4 --model checkpoints/ --t5 t5-base/ -o out.wav
    audiox generate --video clip.mp4 --model checkpoints/ --synchformer synchformer_state_dict.pth -o out.wav
    audiox generate --prompts prompts.jsonl --out clips/ --batch-size 8   # many clips (audiox_engine.batch)
    audiox bench --suite headline --smoke --out results.json
    audiox distill --toy --out runs/toy

Bad input exits with status 2 and one line naming what is wrong and what to do, found
before any model is built when it lies in the arguments or paths; Ctrl-C exits with 130.
Nothing is left half-written (each file is written to a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import sys
import tempfile

__all__ = ["main"]

DEFAULT_MODEL = "tiny"
DESCRIPTION = "audiox-engine: generate audio with AudioX-Turbo (text / video / audio prompts), benchmark, distill."
EPILOG = """examples:
  audiox generate --prompt "a loud square tone at 523 Hz" --seconds 5 -o tone.wav
  audiox generate --prompt "rain" --video clip.mp4 --model checkpoints/ --t5 t5-base/ -o rain.flac
  audiox generate --prompts prompts.jsonl --out clips/ --batch-size 8     one clip per line
  audiox generate --help      every option of generate
"""
# The pipeline's argument names, as this command spells them (its errors name the flag).
FLAGS = {"seconds": "--seconds", "steps": "--steps", "batch_size": "--batch", "cfg_scale": "--cfg",
         "seed": "--seed", "video_sync": "--video-sync", "device": "--device", "text": "--prompt"}


class UsageError(ValueError):
    """A bad input of the command, reported on one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block), raised rather than exiting."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _build_generate_parser(sub) -> None:
    from audiox_engine.audiox.sampling import TEACHER_CFG_SCALE, TEACHER_STEPS
    from audiox_engine.batch import add_batch_arguments

    p = sub.add_parser("generate", help="generate audio from text / video / audio prompts",
                       description="Generate audio from any of a text, video and audio prompt.")
    p.add_argument("--prompt", "-p", default=None, help="text prompt")
    p.add_argument("--video", default=None, help="video file (decoded at 5 fps for CLIP and 25 fps for the Synchformer)")
    p.add_argument("--video-sync", default=None,
                   help="precomputed Synchformer features as .safetensors / .pt / .pth: one tensor (240, 768) or "
                        "(1, 240, 768)")
    p.add_argument("--synchformer", default=None, metavar="PATH",
                   help="Synchformer checkpoint for video tasks (default: <model>/synchformer/synchformer_state_dict.pth)")
    p.add_argument("--zero-sync", action="store_true",
                   help="run a video task without the Synchformer, on zero sync features (not the release's conditioning)")
    p.add_argument("--audio", default=None, help="audio prompt file (any format soundfile reads)")
    p.add_argument("--model", default=None,
                   help=f"a preset name ({DEFAULT_MODEL!r}: the embedded model, the default) or a model folder; "
                        f"a path such as ./{DEFAULT_MODEL} always means the folder")
    p.add_argument("--t5", default=None, help="local T5 folder (t5-base) for a model folder's text encoder")
    p.add_argument("--teacher", action="store_true",
                   help="run the multi-step teacher sampler (Euler + CFG) on a teacher checkpoint")
    p.add_argument("--steps", type=int, default=None, help=f"sampling steps (default: Turbo 4, teacher {TEACHER_STEPS})")
    p.add_argument("--cfg", type=float, default=None,
                   help=f"CFG scale, teacher only (default: {TEACHER_CFG_SCALE:g}, the release's teacher guidance)")
    p.add_argument("--seconds", type=float, default=10.0, help="output length in seconds (default: 10, the most)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0); the same seed gives the same audio")
    p.add_argument("--batch", type=int, default=1, help="clips to generate (out.wav, out_1.wav, ...)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--accelerate", action="store_true",
                   help="run through engine.accelerate: Triton kernels and CUDA graphs on a GPU, the CPU backend on the CPU")
    p.add_argument("--no-mask-audio-prompt", action="store_true", help="do not mask a random span of the audio prompt")
    p.add_argument("--normalize", choices=["none", "peak"], default="none",
                   help="none (default): the level the model made, so 'soft' and 'loud' differ; "
                        "peak: scale each clip to full scale (as the release's scripts do)")
    p.add_argument("--strict", action="store_true", help="refuse a prompt longer than the text encoder reads")
    p.add_argument("-o", "--output", default=None,
                   help="output file; its extension picks the format: .wav, .flac (16-bit), .ogg, .mp3")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or 'wrote' lines")
    add_batch_arguments(p)


# ----------------------------------------------------------------------------- checks (no model)


def _resolve_model(value: str | None) -> tuple[str, str]:
    """``("preset", name)`` or ``("folder", path)``. A bare preset name is the preset; a value
    written as a path (``./tiny``, ``models/tiny``, ``tiny/``) is the folder."""
    from audiox_engine.audiox.config import PRESETS

    if value is None:
        return "preset", DEFAULT_MODEL
    as_path = os.sep in value or (os.altsep or os.sep) in value or value.startswith((".", "~"))
    path = os.path.expanduser(value)
    if not as_path and value in PRESETS:
        if os.path.isdir(value):
            other = "leave --model out" if value == DEFAULT_MODEL else "run from another folder"
            raise UsageError(f"--model {value} names both the preset {value!r} and the folder ./{value}: "
                             f"write ./{value} for the folder, or {other} for the preset")
        return "preset", value
    if os.path.isdir(path):
        return "folder", path
    if os.path.exists(path):
        raise UsageError(f"--model {value} is a file: give the folder that holds it and its model_config.json")
    if as_path:
        raise UsageError(f"--model {value}: folder not found")
    raise UsageError(f"--model {value!r} is neither a folder nor a preset ({', '.join(sorted(PRESETS))})")


def _output_paths(output: str, n: int) -> list[str]:
    if n == 1:
        return [output]
    root, ext = os.path.splitext(output)
    return [output] + [f"{root}_{i}{ext}" for i in range(1, n)]


def _check_outputs(output: str, n: int, force: bool) -> tuple[list[str], tuple[str, str]]:
    """Every output path is a new (or, with --force, replaceable) file of a writable format in
    a writable folder; returns the paths and the format."""
    from audiox_engine.audiox.media import output_format

    if not output.strip():
        raise UsageError("-o is empty: give an output file name (e.g. -o out.wav)")
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        raise UsageError(f"-o {output} is a folder: give a file name in it (e.g. -o {os.path.join(output, 'out.wav')})")
    fmt = output_format(output)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UsageError(f"-o {output}: the folder {folder} does not exist (create it first)")
    try:  # os.access says yes to root on a read-only mount: really create a file
        fd, probe = tempfile.mkstemp(prefix=".audiox-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"-o {output}: cannot write in {folder} ({e.strerror}): choose another folder") from None
    paths = _output_paths(output, n)
    for out in paths:
        if os.path.isdir(out):
            raise UsageError(f"{out} is a folder: choose another output name")
        if os.path.exists(out) and not force:
            raise UsageError(f"{out} exists (use --force to overwrite)")
    return paths, fmt


def _flag_names(message: str) -> str:
    """A pipeline error in this command's terms (``seconds must ...`` -> ``--seconds must ...``)."""
    return re.sub(r"^(\w+)\b", lambda m: FLAGS.get(m.group(1), m.group(1)), message, count=1)


def _read_sync(path: str | None):
    if path is None:
        return None
    from audiox_engine.audiox.checkpoint import read_tensor
    from audiox_engine.audiox.errors import CheckpointError

    try:
        return read_tensor(path)
    except CheckpointError as e:
        raise UsageError(f"--video-sync {e}") from None


def _probe_media(video: str | None, audio: str | None) -> None:
    """Open the prompt files (headers only), so that a file of the wrong kind is named before
    the model is built."""
    if audio is not None and os.path.isfile(audio):
        import soundfile as sf

        try:
            sf.info(audio)
        except Exception as e:  # soundfile's LibsndfileError / RuntimeError
            reason = str(e).split(": ")[-1].rstrip(".")
            raise UsageError(f"--audio {audio}: not an audio file soundfile reads ({reason})") from None
    if video is not None and os.path.isfile(video):
        import av

        try:
            with av.open(video) as container:
                if not container.streams.video:
                    raise UsageError(f"--video {video}: the file has no video stream")
        except av.FFmpegError as e:
            raise UsageError(f"--video {video}: not a video file FFmpeg reads ({e.strerror or e})") from None


def _check_prompt_length(prompt: str, t5_dir: str | None) -> None:
    """--strict: refuse, before the model is built, a prompt the text encoder would cut."""
    from audiox_engine.audiox.text_encoder import load_tokenizer

    if t5_dir is None or not os.path.isdir(t5_dir):
        return  # a random stand-in: the pipeline checks it with the tokenizer it builds
    tokenizer, max_length = load_tokenizer(t5_dir)
    n = tokenizer.token_count(prompt)
    if n > max_length:
        raise UsageError(f"--prompt takes {n} tokens and the text encoder reads {max_length}: shorten it")


def _check_video_sync(args, kind: str, model: str) -> None:
    """Refuse a video task that would need a Synchformer checkpoint the model folder lacks,
    before anything is loaded; an explicit choice of sync features is exclusive."""
    from audiox_engine.audiox.pipeline import SYNCHFORMER_FILE, find_synchformer, missing_synchformer_message

    if args.zero_sync and args.video_sync is not None:
        raise UsageError("give either --video-sync or --zero-sync, not both")
    if args.synchformer is not None and not os.path.isfile(args.synchformer):
        raise UsageError(f"--synchformer: file not found: {args.synchformer}")
    needs_synchformer = args.video is not None and args.video_sync is None and not args.zero_sync
    if needs_synchformer and args.synchformer is None and kind == "folder" and find_synchformer(model) is None:
        raise UsageError(missing_synchformer_message(os.path.join(model, SYNCHFORMER_FILE)))


def _model_plan(args) -> dict:
    """The model (preset or folder), its config, device and dtype, checked without building it."""
    import torch

    from audiox_engine.audiox.config import get_preset
    from audiox_engine.audiox.pipeline import check_device, embedded_folder, read_model_config
    from audiox_engine.audiox.text_encoder import check_text_encoder_dir

    if args.cfg is not None and not args.teacher:
        raise UsageError("--cfg applies to the teacher sampler (--teacher); the Turbo student runs without CFG")
    kind, model = _resolve_model(args.model)
    folder = model if kind == "folder" else embedded_folder(model)
    if args.t5 is not None and kind == "preset":
        raise UsageError(f"--t5: the preset {model!r} has its own text encoder; --t5 is for a model folder (--model DIR)")
    if args.t5 is not None:
        check_text_encoder_dir(args.t5)
    cfg = read_model_config(folder) if folder is not None else get_preset(model)
    return {"kind": kind, "model": model, "folder": folder, "cfg": cfg, "device": check_device(args.device),
            "dtype": getattr(torch, args.dtype)}


def _plan(args):
    """Everything about the arguments and paths that can be checked without building the model."""
    from audiox_engine.audiox.pipeline import check_generation_args
    from audiox_engine.batch import check_no_batch_flags

    check_no_batch_flags(args)
    if args.prompt is None and args.video is None and args.audio is None:
        raise UsageError("give at least one of --prompt, --video, --audio (or --prompts FILE.jsonl for many clips)")
    if args.output is None:
        raise UsageError("give the output file: -o FILE (e.g. -o out.wav)")
    model_plan = _model_plan(args)
    kind, model, folder, cfg, device = (model_plan[k] for k in ("kind", "model", "folder", "cfg", "device"))
    _check_video_sync(args, kind, model)
    video_sync = "zeros" if args.zero_sync else _read_sync(args.video_sync)
    checked = check_generation_args(
        cfg, text=args.prompt, video=args.video, audio=args.audio, video_sync=video_sync,
        seconds=args.seconds, steps=args.steps, cfg_scale=args.cfg, mode="teacher" if args.teacher else "turbo",
        generator=args.seed, batch_size=args.batch, device=device)
    outputs, fmt = _check_outputs(args.output, checked.batch_size, args.force)
    _probe_media(args.video, args.audio)
    if args.strict and args.prompt is not None:
        t5_dir = args.t5 or (os.path.join(folder, "t5-base") if folder is not None else None)
        _check_prompt_length(args.prompt, t5_dir)
    return model_plan | {"outputs": outputs, "format": fmt, "checked": checked}


# ----------------------------------------------------------------------------- generate


def _load_pipeline(args, plan):
    from audiox_engine.audiox.pipeline import AudioXPipeline

    if plan["kind"] == "preset":
        pipe = AudioXPipeline.from_preset(plan["model"], device=plan["device"], dtype=plan["dtype"])
        if args.synchformer is not None:
            pipe.load_synchformer(args.synchformer)
        return pipe
    return AudioXPipeline.from_pretrained(plan["model"], device=plan["device"], dtype=plan["dtype"], t5_dir=args.t5,
                                          synchformer=args.synchformer)


def _db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-12))


def cmd_generate(args) -> int:
    from audiox_engine.audiox.media import write_audio

    if args.prompts is not None:
        from audiox_engine.batch import run_batch

        return run_batch(args, _model_plan, _load_pipeline, _report_error)
    plan = _plan(args)
    pipe = _load_pipeline(args, plan)
    if args.accelerate:
        from audiox_engine import engine

        pipe = engine.accelerate(pipe, dtype=plan["dtype"])
    if not pipe.trained and not args.quiet:
        print(f"audiox: note: {pipe.source.detail}: the output is noise-like, not real audio", file=sys.stderr)
    checked = plan["checked"]
    wave, sr = pipe(
        args.prompt,
        video=args.video,
        video_sync=checked.video_sync,
        audio=args.audio,
        seconds=checked.seconds,
        steps=checked.steps,
        cfg_scale=checked.cfg_scale if args.teacher else None,
        mode=checked.mode,
        generator=checked.generator,
        batch_size=checked.batch_size,
        progress=not args.quiet,
        mask_audio_prompt=not args.no_mask_audio_prompt,
        strict=args.strict,
    )
    for clip, out in zip(wave, plan["outputs"]):
        peak = clip.abs().max().item()
        if args.normalize == "peak":
            clip, peak = clip / max(peak, 1e-12), 1.0
        clipped = write_audio(out, clip, sr, format=plan["format"])
        if not args.quiet:
            print(f"wrote {out} ({clip.shape[-1] / sr:.2f} s, {sr} Hz, {clip.shape[0]} ch, peak {_db(peak):.1f} dBFS)")
        if clipped:
            print(f"audiox: warning: {out}: {clipped} samples ({100 * clipped / clip.numel():.2g} %) were beyond "
                  f"full scale and clipped (peak {_db(peak):+.1f} dBFS); --normalize peak scales the clip to fit",
                  file=sys.stderr)
        elif peak < 1e-3:
            print(f"audiox: note: {out} is near silence (peak {_db(peak):.0f} dBFS): the model made little of "
                  "this prompt", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- entry point


def _generate_main(argv: list[str]) -> int:
    parser = _Parser(prog="audiox", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,bench,profile,distill}")
    _build_generate_parser(sub)
    sub.add_parser("bench", help="run benchmark suites / build reports (see `audiox bench --help`)")
    sub.add_parser("profile", help="torch.profiler trace of one generation (see `audiox profile --help`)")
    sub.add_parser("distill", help="DMD distillation (see `audiox distill --help`)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    logging.basicConfig(level=logging.WARNING, format="audiox: %(name)s: %(levelname)s: %(message)s")
    with _warnings_to_stderr():
        return cmd_generate(args)


class _StderrHandler(logging.Handler):
    """One line per record on the current sys.stderr, in the command's voice."""

    def emit(self, record):
        print(f"audiox: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


@contextlib.contextmanager
def _warnings_to_stderr():
    """The project's warnings (a prompt cut, a partial load) on stderr while the command runs."""
    logger = logging.getLogger("audiox_engine")
    handler, propagate = _StderrHandler(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _report_error(e: Exception) -> int:
    """A bad input on one line (``audiox: error: ...``); returns the exit status, 2."""
    from audiox_engine.audiox.errors import ArgumentError

    if isinstance(e, UsageError):
        print(f"audiox: error: {e}", file=sys.stderr)
        return 2
    # The project's named errors (ArgumentError, ConfigError, CheckpointError, MediaError) are
    # ValueErrors whose first line says what is wrong and what to do.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"audiox: error: {_flag_names(first) if isinstance(e, ArgumentError) else first}", file=sys.stderr)
    return 2


def _generate_reporting(argv: list[str]) -> int:
    """``generate`` with every bad input reported on one line (exit status 2)."""
    try:
        return _generate_main(argv)
    except (ValueError, OSError) as e:  # UsageError and the project's named errors among them
        return _report_error(e)


class _Interrupts:
    """Ctrl-C, noticed even where a library swallows the KeyboardInterrupt or turns it into
    another error (an import cut half-way fails later as an ImportError or AttributeError)."""

    def __init__(self):
        self.seen = False
        self.previous = None

    def __enter__(self):
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    status = None
    with _Interrupts() as interrupts:
        try:
            # Sub-commands owned by other packages take their own argument parsers; `bench` and
            # `profile` report Ctrl-C themselves (status 130, one line of their own).
            if argv and argv[0] in ("bench", "profile"):
                from audiox_engine.benchmarks import cli as bench_cli

                status = bench_cli.main(argv)
            elif argv and argv[0] == "distill":
                from audiox_engine.audiox.distill import cli as distill_cli

                status = distill_cli.main(argv[1:])
            else:
                status = _generate_reporting(argv)
        except KeyboardInterrupt:
            interrupts.seen = True
        except BaseException:
            if not interrupts.seen:
                raise
    if interrupts.seen and status != 130:
        print("audiox: interrupted (nothing half-written is left behind)", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
