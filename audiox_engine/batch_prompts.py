"""The prompt file of ``audiox generate --prompts``: one JSON object per line, checked.

A line is ``{"id": ..., "prompt": ..., "video": ..., "audio": ..., "seconds": ..., "seed": ...}``:
``id`` is required and names the output file; ``video`` and ``audio`` are paths relative to the
prompt file's folder; ``seconds`` defaults to the run's flag, and ``seed`` to one derived from
the run's ``--seed`` and the line's id (:func:`item_seed`), so lines without a seed get noise of
their own, and an id's clip does not depend on where its line stands. A line that is not
an item (not JSON, an unknown key, a value out of range, a missing file) is a ``Failure``
with its line number, and the rest go on; ids that are unsafe as file names or given twice
refuse the whole file before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass

from audiox_engine.audiox.errors import ArgumentError

__all__ = ["Item", "Failure", "read_prompts", "long_prompts", "item_seed", "ID_PATTERN", "LINE_KEYS"]

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ID_RULE = "letters, digits, '.', '_' and '-', first a letter or digit, at most 128 characters"
LINE_KEYS = ("id", "prompt", "video", "audio", "seconds", "seed")


def item_seed(run_seed: int, item_id: str) -> int:
    """The seed of a line that gives none: 63 bits of SHA-256 over the run's seed and the id
    (stable across runs, processes and Python versions; recorded in the manifest)."""
    digest = hashlib.sha256(f"{int(run_seed)}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class Item:
    """One line of the prompt file, checked."""

    id: str
    line: int
    prompt: str | None
    video: str | None
    audio: str | None
    seconds: float
    seed: int


@dataclass
class Failure:
    """A line or an item that was not made, and why."""

    line: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f" (id {self.id!r})" if self.id else "") + f": {self.reason}"


def _line_item(number: int, record: dict, base: str, defaults: dict, cfg) -> Item:
    """The item of one parsed line; ArgumentError / MediaError naming what is wrong."""
    from audiox_engine.audiox.arguments import SEED_RANGE, check_generation_args
    from audiox_engine.audiox.errors import as_int

    unknown = sorted(set(record) - set(LINE_KEYS))
    if unknown:
        raise ArgumentError(f"unknown key(s) {', '.join(map(repr, unknown))}: a line takes {', '.join(LINE_KEYS)}")
    prompt, video, audio = (record.get(k) for k in ("prompt", "video", "audio"))
    if prompt is None and video is None and audio is None:
        raise ArgumentError("give at least one of prompt, video, audio")
    if prompt is not None and not isinstance(prompt, str):
        raise ArgumentError(f"prompt must be a string, got {prompt!r:.40}")
    for key, value in (("video", video), ("audio", audio)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ArgumentError(f"{key} must be a file path (a non-empty string), got {value!r:.40}")
    video, audio = (None if p is None else os.path.join(base, os.path.expanduser(p)) for p in (video, audio))
    seed = record["seed"] if "seed" in record else item_seed(defaults["seed"], record["id"])
    seed = as_int("seed", seed, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
    checked = check_generation_args(cfg, text=prompt, video=video, audio=audio,
                                    seconds=record.get("seconds", defaults["seconds"]))
    return Item(record["id"], number, prompt, video, audio, checked.seconds, seed)


def read_prompts(path: str, cfg, defaults: dict) -> tuple[list[Item], list[Failure]]:
    """The items of a prompt file and the lines that are not items (blank lines aside).

    Raises ArgumentError, before any work, for an unreadable file, an id unsafe as a file name, an
    id given twice (letters' case aside: file systems may not tell them apart) or no item at all.
    """
    from audiox_engine.audiox.errors import AudioXError

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ArgumentError(f"--prompts {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    base = os.path.dirname(os.path.abspath(path))
    items, failures, first_line = [], [], {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            failures.append(Failure(number, None, f"not JSON ({e.msg}, column {e.colno})"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            failures.append(Failure(number, None, 'not a JSON object with an "id" string'))
            continue
        item_id = record["id"]
        if not ID_PATTERN.fullmatch(item_id):
            raise ArgumentError(f"--prompts {path}, line {number}: id {item_id!r:.60} is not safe as a file name "
                                f"(use {ID_RULE})")
        if item_id.casefold() in first_line:
            raise ArgumentError(f"--prompts {path}: id {item_id!r} on line {number} repeats line "
                                f"{first_line[item_id.casefold()]} (ids name the output files: make each unique)")
        first_line[item_id.casefold()] = number
        try:
            items.append(_line_item(number, record, base, defaults, cfg))
        except AudioXError as e:
            failures.append(Failure(number, item_id, str(e).splitlines()[0]))
    if not items and not failures:
        raise ArgumentError(f"--prompts {path} holds no line: give one JSON object per line")
    return items, failures


def long_prompts(items: list[Item], t5_dir: str | None, strict: bool,
                 warn: bool) -> tuple[list[Item], list[Failure]]:
    """Prompts the text encoder would cut: a warning each (with ``warn``), or with --strict a failure each."""
    from audiox_engine.audiox.text_encoder import load_tokenizer

    if t5_dir is None or not os.path.isdir(t5_dir):
        return items, []  # a random stand-in: the pipeline warns with the tokenizer it builds
    tokenizer, max_length = load_tokenizer(t5_dir)
    kept, failures = [], []
    for it in items:
        n = 0 if it.prompt is None else tokenizer.token_count(it.prompt)
        if n > max_length:
            what = f"the prompt takes {n} tokens and the text encoder reads {max_length}"
            if strict:
                failures.append(Failure(it.line, it.id, f"{what}: shorten it"))
                continue
            if warn:
                print(f"audiox: warning: line {it.line} (id {it.id!r}): {what}: the rest is cut", file=sys.stderr)
        kept.append(it)
    return kept, failures
