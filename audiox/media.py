"""Reading the conditioning media: audio prompts (soundfile) and video frames (PyAV).

Both return exactly what the conditioners take:
- `load_audio_prompt`: (2, 441000) float32 at 44.1 kHz, a 10 s window, left-padded with
  silence when the file is shorter (as the release's `load_and_process_audio`; unlike it,
  other sample rates are resampled instead of being read as if they were 44.1 kHz).
- `load_video_frames`: (50, 3, 224, 224) uint8, the release's frame pick (every
  ceil(fps / 5)-th frame from the start time, last frame repeated up to 50).
- `load_video_and_sync_frames`: those, and the Synchformer's (250, 3, 224, 224) uint8 at
  25 fps with the same rule, from one decode pass.

Known, small differences from the release's readers (decord + torchvision): the YUV->RGB
conversion and the antialiased bilinear resize of uint8 frames may differ by a unit in the
last place of some pixels.
"""

from __future__ import annotations

import math
import os

import torch
from torch.nn import functional as F

from .errors import MediaError

# What an output file's extension asks for: soundfile's (format, subtype). Integer PCM and the
# lossy codecs store [-1, 1]; what lies beyond is clipped (and counted, see write_audio).
OUTPUT_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


def _check_file(path: str | os.PathLike, kind: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{kind} file not found: {path!r}")
    if not os.path.isfile(path):
        raise MediaError(f"{kind} path is not a file: {path!r}")
    return path


# ----------------------------------------------------------------------------- resampling


def _sinc_resample_kernel(orig: int, new: int, zeros: int, rolloff: float, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Polyphase low-pass kernels (new, 1, K) for a rational rate change orig -> new (coprime).

    Output phase j sits at input time j * orig / new (in input samples). Each phase's taps are
    a Hann-windowed sinc with cut-off rolloff * min(orig, new) / 2 (in units where the
    coarser rate is min(orig, new)), `zeros` zero crossings to each side.
    """
    cutoff = min(orig, new) * rolloff           # the filter's bandwidth, in "per orig samples" units
    half = math.ceil(zeros * orig / cutoff)     # taps needed on each side, in input samples
    taps = torch.arange(-half, half + orig, dtype=torch.float64)          # input offsets
    phase = torch.arange(0, new, dtype=torch.float64)[:, None] * orig / new  # where output j falls
    t = (taps[None, :] - phase) / orig * cutoff  # distance in units of the filter's zero crossings
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t))
    kernel = sinc * window * (cutoff / orig)
    return kernel.to(dtype).unsqueeze(1), half


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int, zeros: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling along the last axis: (..., L) -> (..., ceil(L * new_sr / orig_sr)).

    Windowed-sinc polyphase filter (the same design as torchaudio's default `sinc_interp_hann`,
    6 zero crossings, roll-off 0.99): one strided conv1d, exact for any rational ratio.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return audio
    if not audio.is_floating_point():
        raise TypeError(f"resample: audio must be floating point, got {audio.dtype}")
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, half = _sinc_resample_kernel(orig, new, zeros, rolloff, audio.dtype)
    shape, length = audio.shape[:-1], audio.shape[-1]
    x = F.pad(audio.reshape(-1, 1, length), (half, half + orig))
    y = F.conv1d(x, kernel.to(audio.device), stride=orig)          # (N, new, frames): phases of each block
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    return y[:, : math.ceil(new * length / orig)].reshape(*shape, -1)


# ----------------------------------------------------------------------------- audio


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Any file libsndfile reads (wav, flac, ogg, mp3 ...) -> (audio (C, L) float32, sample rate)."""
    import soundfile as sf

    path = _check_file(path, "audio")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError with its own wording
        raise MediaError(f"cannot decode audio file {path!r}: {e}") from e
    if data.shape[0] == 0:
        raise MediaError(f"audio file {path!r} has no samples")
    return torch.from_numpy(data.T.copy()), int(sr)


def writable_formats() -> dict[str, tuple[str, str]]:
    """The extensions of :data:`OUTPUT_FORMATS` this soundfile / libsndfile build can write."""
    import soundfile as sf

    formats = sf.available_formats()
    return {ext: (fmt, sub) for ext, (fmt, sub) in OUTPUT_FORMATS.items()
            if fmt in formats and sub in sf.available_subtypes(fmt)}


def output_format(path: str | os.PathLike) -> tuple[str, str]:
    """The (format, subtype) an output path's extension names; :class:`MediaError` if none can be written."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    formats = writable_formats()
    if ext not in formats:
        what = f"a {ext} file" if ext else "a file without an extension"
        raise MediaError(f"{os.fspath(path)}: cannot write {what}; name it {', '.join(formats)}")
    return formats[ext]


def write_audio(path: str | os.PathLike, audio: torch.Tensor, sample_rate: int,
                format: tuple[str, str] | None = None) -> int:
    """Write ``audio`` (C, L) float in the format its extension names (see :func:`output_format`;
    or ``format``), atomically: a reader never sees a half-written file, and a failed write
    leaves nothing behind. Samples beyond [-1, 1] are clipped; returns how many were."""
    import soundfile as sf

    from ._io import atomic_path

    path = os.fspath(path)
    fmt, subtype = format or output_format(path)
    data = audio.detach().float().cpu()
    clipped = int((data.abs() > 1).sum())
    data = data.clamp(-1, 1).T.contiguous().numpy()
    try:
        with atomic_path(path, suffix=os.path.splitext(path)[1] or ".tmp") as tmp:
            sf.write(tmp, data, sample_rate, format=fmt, subtype=subtype)
    except (OSError, RuntimeError) as e:  # soundfile's errors are RuntimeErrors that name the temporary file
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).split(": ")[-1]
        raise MediaError(f"cannot write {path}: {reason}") from None
    return clipped


def write_wav(path: str | os.PathLike, audio: torch.Tensor, sample_rate: int) -> int:
    """:func:`write_audio` as a 16-bit PCM WAV, whatever the extension; returns the clipped samples' count."""
    return write_audio(path, audio, sample_rate, format=OUTPUT_FORMATS[".wav"])


def load_audio_prompt(path: str | os.PathLike, sample_rate: int = 44100, seconds_start: float = 0.0,
                      seconds_total: float = 10.0, channels: int = 2) -> torch.Tensor:
    """An audio prompt as the model takes it: (channels, seconds_total * sample_rate) float32.

    Resampled to `sample_rate`; mono is duplicated, extra channels dropped; the window
    [seconds_start, seconds_start + seconds_total) is cut and, if short, silence is put in
    front (the release pads on the left).
    """
    audio, sr = read_audio(path)
    audio = resample(audio, sr, sample_rate)
    if audio.shape[0] == 1 and channels > 1:
        audio = audio.repeat(channels, 1)
    audio = audio[:channels] if channels > 1 else audio.mean(0, keepdim=True)
    start, total = int(sample_rate * seconds_start), int(sample_rate * seconds_total)
    audio = audio[:, start:start + total]
    if audio.shape[1] < total:
        audio = F.pad(audio, (total - audio.shape[1], 0))
    return audio.contiguous()


# ----------------------------------------------------------------------------- video


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) uint8, antialiased bilinear (torchvision's Resize)."""
    if frames.shape[-2:] == (size, size):
        return frames
    out = F.interpolate(frames.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _frame_pick(rate: float | None, fps: int, seconds_start: float, seconds_total: float) -> tuple[int, int, int]:
    """The release's pick at ``fps`` from a source at ``rate`` frames/s: (first, step, count).

    Every ceil(rate / fps)-th frame from frame int(seconds_start * rate), count = fps *
    seconds_total; an unknown rate (a still image) counts as ``fps``.
    """
    rate = rate or float(fps)
    count = int(fps * seconds_total + 1e-9)  # 25 * 0.8 s is 20 frames, not 19.999...
    return int(seconds_start * rate), max(1, math.ceil(rate / fps)), count


def _decode_picks(path: str | os.PathLike, seconds_start: float, seconds_total: float,
                  picks: list[tuple[int, int]]) -> list[torch.Tensor]:
    """One decode pass of the file's first video stream, picking frames for several rates.

    picks: (fps, size) pairs; returns, for each, (fps * seconds_total, 3, size, size)
    uint8: the picked frames resized (antialiased bilinear), then the last one repeated
    up to the count (or cut), as the release's ``read_video``.
    """
    import av

    path = _check_file(path, "video")
    try:
        container = av.open(path)
    except Exception as e:
        raise MediaError(f"cannot open video file {path!r}: {e}") from e
    with container:
        if not container.streams.video:
            raise MediaError(f"video file {path!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        plans = [_frame_pick(float(rate) if rate else None, fps, seconds_start, seconds_total) for fps, _ in picks]
        stop = max(first + count * step for first, step, count in plans)
        frames: list[list[torch.Tensor]] = [[] for _ in picks]
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index >= stop:
                    break
                rgb = None
                for (first, step, count), (_, size), out in zip(plans, picks, frames):
                    if first <= index < first + count * step and (index - first) % step == 0:
                        if rgb is None:
                            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
                        out.append(resize_frames(rgb, size)[0])
        except Exception as e:
            raise MediaError(f"cannot decode video file {path!r}: {e}") from e
    if not all(frames):
        raise MediaError(f"video file {path!r} has no frames at or after {seconds_start} s")
    videos = []
    for (_, _, count), out in zip(plans, frames):
        video = torch.stack(out)
        if video.shape[0] < count:
            video = torch.cat([video, video[-1:].expand(count - video.shape[0], -1, -1, -1)])
        videos.append(video[:count].contiguous())
    return videos


def load_video_frames(path: str | os.PathLike, seconds_start: float = 0.0, seconds_total: float = 10.0,
                      fps: int = 5, size: int = 224) -> torch.Tensor:
    """Frames for the video conditioner: (fps * seconds_total, 3, size, size) uint8.

    The release's pick: with the file's average frame rate r, take every ceil(r / fps)-th
    decoded frame from frame int(seconds_start * r); pad with the last frame (or cut) to
    fps * seconds_total frames. Images (png, jpg) decode as one frame and are repeated.
    """
    return _decode_picks(path, seconds_start, seconds_total, [(fps, size)])[0]


def load_video_and_sync_frames(path: str | os.PathLike, seconds_start: float = 0.0, seconds_total: float = 10.0,
                               fps: int = 5, size: int = 224, sync_fps: int = 25,
                               sync_size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP frames and the Synchformer frames of one clip, in one decode pass.

    Returns (frames (fps * seconds_total, 3, size, size), sync frames (sync_fps *
    seconds_total, 3, sync_size, sync_size)), both uint8, each picked as
    :func:`load_video_frames` does at its own rate: the release reads the clip twice, at
    5 fps for CLIP and at 25 fps for the Synchformer (every ceil(r / 25)-th source frame,
    so a 30 fps clip gives 15 distinct frames per second, the last one repeating to 250).
    """
    frames, sync = _decode_picks(path, seconds_start, seconds_total, [(fps, size), (sync_fps, sync_size)])
    return frames, sync
