"""Checkpoint reading and writing: safetensors, Lightning ``.ckpt`` and raw state dicts.

Security: pickled files are read with ``torch.load(weights_only=True)`` only. A file
whose unpickling needs code execution is refused with :class:`UnsafeCheckpointError`;
nothing is executed.

Official files carry prefixes (``model.``, ``module.``, ``student.``, ...) and often
several sub-models (DiT, MAF, conditioners, VAE) in one dict. :func:`load_into` picks the
prefix (up to four leading key components) under which the file matches the target
module best, reports every missing,
unexpected or mismatched key by name (with both shapes), and only then copies: a strict
load that fails leaves the module untouched.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field

import torch
from torch import nn

from ._io import atomic_path
from .errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "LoadReport",
    "read_state_dict",
    "read_tensor",
    "match_state_dict",
    "load_into",
    "save_safetensors",
    "FORMAT_VERSION",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
# Sub-model prefixes tried when matching a file to a module: official files nest the DiT
# as `model.model.` and may wrap everything in `module.` (DDP) or `student.` (the DMD trainer).
MAX_PREFIX_DEPTH = 4
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass
class LoadReport:
    prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, file shape, model shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line with what matters most: the first mismatched, missing and unexpected keys, and counts."""
        parts = []
        if self.mismatched:
            k, a, b = self.mismatched[0]
            more = f" ({len(self.mismatched) - 1} more keys differ in shape)" if len(self.mismatched) > 1 else ""
            parts.append(f"{k} is {tuple(a)} in the file but {tuple(b)} in the model{more}")
        for items, what in ((self.missing, "missing from the file"), (self.unexpected, "in the file, not in the model")):
            if items:
                parts.append(f"{len(items)} key{'s' if len(items) > 1 else ''} {what} (first: {items[0]})")
        return "; ".join(parts) if parts else "all keys match"

    def describe(self, limit: int = 20) -> str:
        lines = []

        def block(title, items):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  {it}" for it in items[:limit])
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")

        block("missing keys (in the model, not in the file)", self.missing)
        block("unexpected keys (in the file, not in the model)", self.unexpected)
        block(
            "shape mismatches",
            [f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched],
        )
        return "\n".join(lines) if lines else "all keys match"


def _unwrap(obj, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # Lightning
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors (keys: {list(obj)[:10]})")
    return tensors


def _what_it_is(path: str) -> str | None:
    """What a file that should be a PyTorch pickle really is, when it is plainly not one."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"version https://git-lfs.github.com/spec"):
        return "a Git LFS pointer, not the weights: fetch the real file (git lfs pull, or download it again)"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML/XML page (a download that saved a web page instead of the file)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None  # a zip (torch.save) or a protocol-2+ pickle: let torch.load judge it
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a PyTorch checkpoint (no zip or pickle header)"
    return "a text file, not a PyTorch checkpoint"


def _refused_global(message: str) -> str:
    """The global a refused pickle asks for, from torch's message (without its advice)."""
    lines = [line.strip().rstrip(".") for line in message.splitlines()]
    for line in lines:
        if "GLOBAL" in line:
            return line
    for line in lines:
        if line.startswith("Unsupported"):
            return f"{line} in its pickle stream"
    return "it asks for an object other than tensors"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a pickle (weights only), on CPU."""
    path = str(path)
    obj = _read(path)
    return obj if path.endswith(SAFETENSORS_SUFFIXES) else _unwrap(obj, path)


def read_tensor(path: str | os.PathLike) -> torch.Tensor:
    """The one tensor of a file: a tensor saved on its own (``torch.save(t, path)``, as the
    release stores Synchformer features) or a state dict holding exactly one tensor."""
    path = str(path)
    obj = _read(path)
    if isinstance(obj, torch.Tensor):
        return obj
    tensors = obj if path.endswith(SAFETENSORS_SUFFIXES) else _unwrap(obj, path)
    if len(tensors) != 1:
        raise CheckpointError(f"{path}: expected one tensor, found {len(tensors)} ({', '.join(sorted(tensors)[:4])})")
    return next(iter(tensors.values()))


def _read(path: str):
    """A safetensors file's tensors, or whatever a weights-only pickle holds."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return _read_file(path)
    except OSError as e:  # unreadable (permissions, I/O): named, not a traceback
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None


def _read_file(path: str):
    if path.endswith(SAFETENSORS_SUFFIXES):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except SafetensorError as e:
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    if not path.endswith(PICKLE_SUFFIXES):
        raise CheckpointError(
            f"{path}: unknown checkpoint extension; expected one of "
            f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}"
        )
    kind = _what_it_is(path)
    if kind is not None:
        raise CheckpointError(f"{path} is {kind}")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for our users
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused: its pickle would run code to load ({_refused_global(str(e))}); only "
            "tensors are read. Ask its publisher for a .safetensors file."
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    return obj


def _candidate_prefixes(keys) -> set[str]:
    """Every prefix of up to ``MAX_PREFIX_DEPTH`` leading components (``model.``,
    ``model.model.``, ``pretransform.``, ``student.model.model.`` ...)."""
    cands = {""}
    for k in keys:
        parts = k.split(".")[:-1]
        for depth in range(1, min(len(parts), MAX_PREFIX_DEPTH) + 1):
            cands.add(".".join(parts[:depth]) + ".")
    return cands


def _best_prefix(sd_keys, target_keys: set[str]) -> str:
    best, best_score = "", -1
    for p in sorted(_candidate_prefixes(sd_keys), key=len):
        score = sum(1 for k in sd_keys if k.startswith(p) and k[len(p):] in target_keys)
        if score > best_score:
            best, best_score = p, score
    return best


_PARAMETRIZED_WEIGHT_NORM = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}


def _legacy_weight_norm_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Newer torch saves weight norm as ``parametrizations.weight.original0/1``; the release
    (and our modules' state dicts) use ``weight_g/weight_v``. Same tensors, other names."""
    out = {}
    for k, v in sd.items():
        for new_suffix, old_suffix in _PARAMETRIZED_WEIGHT_NORM.items():
            if k.endswith(new_suffix):
                k = k[: -len(new_suffix)] + old_suffix
                break
        out[k] = v
    return out


def match_state_dict(
    sd: dict[str, torch.Tensor], target: dict[str, tuple], prefix: str | None = None
) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """Match a state dict to a module's key -> shape table (``target``, e.g. from a model
    built on the meta device) without copying anything.

    Returns the report and the tensors that fit (keys relative to the module). ``prefix``
    selects the sub-dict; by default the best-matching wrapper prefix is found.
    """
    sd = _legacy_weight_norm_names(sd)
    if prefix is None:
        prefix = _best_prefix(sd.keys(), set(target))
    sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    report = LoadReport(prefix=prefix)
    report.missing = sorted(set(target) - set(sub))
    report.unexpected = sorted(set(sub) - set(target))
    for k in sorted(set(target) & set(sub)):
        if tuple(sub[k].shape) != tuple(target[k]):
            report.mismatched.append((k, tuple(sub[k].shape), tuple(target[k])))
        else:
            report.loaded.append(k)
    fits = set(report.loaded)
    return report, {k: v for k, v in sub.items() if k in fits}


def load_into(
    module: nn.Module,
    source: str | os.PathLike | dict[str, torch.Tensor],
    *,
    strict: bool = False,
    prefix: str | None = None,
) -> LoadReport:
    """Load ``source`` (a path or a state dict) into ``module``.

    ``prefix`` selects the sub-dict (e.g. ``"model.model."`` for the DiT inside a full
    release checkpoint); by default the best-matching wrapper prefix is found. Keys
    outside the chosen prefix are ignored. With ``strict=True`` any missing, unexpected or
    mismatched key raises :class:`CheckpointError` before anything is copied; otherwise
    matching tensors are loaded and the rest is logged.
    """
    sd = read_state_dict(source) if not isinstance(source, dict) else source
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    report, fitting = match_state_dict(sd, shapes, prefix)
    name, prefix = type(module).__name__, report.prefix
    if not report.loaded:
        raise CheckpointError(
            f"checkpoint does not match {name}: no key fits (prefix {prefix!r}): {report.summary()}\n{report.describe()}"
        )
    if strict and not report.ok:
        raise CheckpointError(
            f"checkpoint does not match {name} (prefix {prefix!r}): {report.summary()}\n{report.describe()}"
        )
    if not report.ok:
        log.warning("partial load into %s (prefix %r):\n%s", name, prefix, report.describe())
    module.load_state_dict(fitting, strict=False)
    return report


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """Write tensors atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    meta = {"format_version": FORMAT_VERSION}
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata=meta)
