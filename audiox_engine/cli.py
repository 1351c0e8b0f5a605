"""The ``audiox`` command.

    audiox generate --prompt "a dog barking" -o dog.wav          # embedded default model
    audiox generate --prompt "..." --video clip.mp4 --model checkpoints/ --seed 1 -o out.wav
    audiox generate --video clip.mp4 --model checkpoints/ --synchformer synchformer_state_dict.pth -o out.wav
    audiox bench --suite headline --smoke --out results.json
    audiox bench report results.json --md BENCHMARKS.md
    audiox profile --out trace.json
    audiox distill --config recipe.json

Bad input exits with status 2 and one line naming what is wrong; nothing is left
half-written (the WAV is written to a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]

DEFAULT_MODEL = "tiny"


class UsageError(Exception):
    """A bad input, reported on one line with exit status 2."""


def _build_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate audio from text / video / audio prompts")
    p.add_argument("--prompt", "-p", default=None, help="text prompt")
    p.add_argument("--video", default=None, help="video file (decoded at 5 fps for CLIP and 25 fps for the Synchformer)")
    p.add_argument("--video-sync", default=None, help="precomputed Synchformer features (240x768) as .safetensors or .pt")
    p.add_argument("--synchformer", default=None, metavar="PATH",
                   help="Synchformer checkpoint for video tasks (default: <model>/synchformer/synchformer_state_dict.pth)")
    p.add_argument("--zero-sync", action="store_true",
                   help="run a video task without the Synchformer, on zero sync features (not the release's conditioning)")
    p.add_argument("--audio", default=None, help="audio prompt file (any format soundfile reads)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a model directory or a preset name (default: %(default)s)")
    p.add_argument("--t5", default=None, help="local T5 directory (t5-base) for real text conditioning")
    p.add_argument("--teacher", action="store_true", help="run the multi-step teacher sampler (Euler + CFG)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (Turbo: 4, teacher: 250)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (teacher only; default 6)")
    p.add_argument("--seconds", type=float, default=10.0, help="output length in seconds (max 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="clips to generate (out.wav, out_1.wav, ...)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--accelerate", action="store_true", help="run through engine.accelerate (GPU)")
    p.add_argument("--no-mask-audio-prompt", action="store_true", help="do not mask a random span of the audio prompt")
    p.add_argument("-o", "--output", required=True, help="output WAV path")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--quiet", "-q", action="store_true")


def _output_paths(output: str, n: int) -> list[str]:
    if n == 1:
        return [output]
    root, ext = os.path.splitext(output)
    return [output] + [f"{root}_{i}{ext}" for i in range(1, n)]


def _load_pipeline(args):
    import torch

    from audiox_engine.audiox.config import PRESETS
    from audiox_engine.audiox.pipeline import AudioXPipeline

    dtype = getattr(torch, args.dtype)
    if os.path.isdir(args.model):
        return AudioXPipeline.from_pretrained(args.model, device=args.device, dtype=dtype, t5_dir=args.t5,
                                              synchformer=args.synchformer)
    if args.model in PRESETS:
        pipe = AudioXPipeline.from_preset(args.model, device=args.device, dtype=dtype)
        if args.synchformer is not None:
            pipe.load_synchformer(args.synchformer)
        return pipe
    raise UsageError(f"--model {args.model!r} is neither a directory nor a preset ({', '.join(sorted(PRESETS))})")


def _check_video_sync(args) -> None:
    """Refuse a video task that would need a Synchformer checkpoint the model directory lacks,
    before anything is loaded; an explicit choice of sync features is exclusive."""
    from audiox_engine.audiox.pipeline import SYNCHFORMER_FILE, find_synchformer, missing_synchformer_message

    if args.zero_sync and args.video_sync is not None:
        raise UsageError("give either --video-sync or --zero-sync, not both")
    needs_synchformer = args.video is not None and args.video_sync is None and not args.zero_sync
    if needs_synchformer and args.synchformer is None and os.path.isdir(args.model) \
            and find_synchformer(args.model) is None:
        raise UsageError(missing_synchformer_message(os.path.join(args.model, SYNCHFORMER_FILE)))


def _read_sync(path: str | None):
    if path is None:
        return None
    from audiox_engine.audiox.checkpoint import read_state_dict

    tensors = read_state_dict(path)
    if len(tensors) != 1:
        raise UsageError(f"--video-sync {path}: expected one tensor, found {sorted(tensors)}")
    t = next(iter(tensors.values())).float()
    return t[None] if t.dim() == 2 else t


def cmd_generate(args) -> int:
    import torch

    from audiox_engine.audiox.media import write_wav

    if args.prompt is None and args.video is None and args.audio is None:
        raise UsageError("give at least one of --prompt, --video, --audio")
    if not 0 < args.seconds <= 10:
        raise UsageError(f"--seconds must be in (0, 10], got {args.seconds:g}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    for flag, path in (("--video", args.video), ("--audio", args.audio), ("--video-sync", args.video_sync),
                       ("--synchformer", args.synchformer)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag}: file not found: {path}")
    _check_video_sync(args)
    outputs = _output_paths(args.output, args.batch)
    for out in outputs:
        if os.path.exists(out) and not args.force:
            raise UsageError(f"{out} exists (use --force to overwrite)")
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise UsageError(f"output folder does not exist: {parent}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")

    pipe = _load_pipeline(args)
    if args.accelerate:
        from audiox_engine import engine

        pipe = engine.accelerate(pipe, dtype=getattr(torch, args.dtype))
    if not pipe.trained and not args.quiet:
        print(f"note: {pipe.source.detail}: the output is noise-like, not real audio", file=sys.stderr)
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    text = None if args.prompt is None else [args.prompt] * args.batch
    wave, sr = pipe(
        text,
        video=args.video,
        video_sync="zeros" if args.zero_sync else _read_sync(args.video_sync),
        audio=args.audio,
        seconds=args.seconds,
        steps=args.steps,
        cfg_scale=args.cfg,
        mode="teacher" if args.teacher else "turbo",
        generator=g,
        batch_size=args.batch if text is None else None,
        progress=not args.quiet,
        mask_audio_prompt=not args.no_mask_audio_prompt,
    )
    if wave.shape[0] == 1 and args.batch > 1:
        wave = wave.expand(args.batch, -1, -1)
    for clip, out in zip(wave, outputs):
        write_wav(out, clip, sr)
        if not args.quiet:
            print(f"wrote {out} ({clip.shape[-1] / sr:.2f} s, {sr} Hz, {clip.shape[0]} ch)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Sub-commands owned by other packages take their own argument parsers.
    if argv and argv[0] in ("bench", "profile"):
        from audiox_engine.benchmarks import cli as bench_cli

        return bench_cli.main(argv)
    if argv and argv[0] == "distill":
        from audiox_engine.audiox.distill import cli as distill_cli

        return distill_cli.main(argv[1:])

    parser = argparse.ArgumentParser(prog="audiox", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,bench,profile,distill}")
    _build_generate_parser(sub)
    sub.add_parser("bench", help="run benchmark suites / build reports (see `audiox bench --help`)")
    sub.add_parser("profile", help="torch.profiler trace of one generation (see `audiox profile --help`)")
    sub.add_parser("distill", help="DMD distillation (see `audiox distill --help`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return cmd_generate(args)
    except UsageError as e:
        print(f"audiox: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError) as e:
        # MediaError, CheckpointError, ConfigError are ValueErrors with a precise message.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"audiox: error: {first}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
