"""What ``audiox_engine.batch`` keeps on disk and exchanges between ranks.

On disk, in the output folder:

- ``manifest.jsonl``: one JSON object per finished clip, ``id`` and ``file`` first; written
  whole and atomically (``audiox._io.atomic_path``) by rank 0 at the end of a run;
- ``manifest.rank<R>.jsonl``: rank R's journal while it runs, one line appended (flushed and
  synced) right after each clip's file is in place. A line cut by a kill is ignored when read,
  so its clip is made again; the merge folds every part into ``manifest.jsonl`` and removes it.

A clip counts as finished when a line names it and its file exists: a file without its line
(killed between the two) is made again, and so is a listed clip whose file was deleted.

Between ranks (``torch.distributed`` over gloo, set up by ``torchrun``): only small Python
objects, the finished ids, the weights digest and each rank's report, so the same code serves
CPU and GPU ranks; without torchrun the group is this process alone and nothing is sent.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
from datetime import timedelta

from audiox_engine.audiox._io import atomic_path

__all__ = ["MANIFEST", "Group", "Journal", "read_records", "finished_records", "merge_manifest",
           "remove_stale_temporaries"]

MANIFEST = "manifest.jsonl"
PART_PATTERN = "manifest.rank*.jsonl"
# The longest a rank waits for the others (the snapshot, the digest, the closing report).
GROUP_TIMEOUT = timedelta(hours=24)


def _part(out: str, rank: int) -> str:
    return os.path.join(out, f"manifest.rank{rank}.jsonl")


def read_records(out: str) -> dict[str, dict]:
    """Every readable manifest line of ``out``, merged file then parts, by id (the last wins)."""
    records: dict[str, dict] = {}
    for path in [os.path.join(out, MANIFEST)] + sorted(glob.glob(os.path.join(out, PART_PATTERN))):
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: its clip is made again
                if isinstance(record, dict) and isinstance(record.get("id"), str) and isinstance(
                        record.get("file"), str):
                    records[record["id"]] = record
    return records


def finished_records(out: str) -> dict[str, dict]:
    """The records whose file exists: the clips a rerun skips."""
    return {k: r for k, r in read_records(out).items() if os.path.isfile(os.path.join(out, r["file"]))}


def merge_manifest(out: str) -> int:
    """Fold the parts into ``manifest.jsonl`` (finished clips only, in prompt-file line order),
    written atomically, then remove the parts; returns how many clips it lists."""
    parts = glob.glob(os.path.join(out, PART_PATTERN))
    records = sorted(finished_records(out).values(), key=lambda r: (r.get("line", 0), r["id"]))
    with atomic_path(os.path.join(out, MANIFEST)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    for part in parts:
        os.unlink(part)
    return len(records)


def remove_stale_temporaries(out: str, names: list[str]) -> None:
    """Remove what a killed run left of these files' atomic writes (``.<name>.<random><ext>``)."""
    for name in names:
        for tmp in glob.glob(os.path.join(out, f".{name}.*")):
            os.unlink(tmp)


class Journal:
    """A rank's manifest part: one JSON line per finished clip, on disk before the next starts."""

    def __init__(self, out: str, rank: int):
        self.path = _part(out, rank)
        self._file = None

    def __enter__(self) -> "Journal":
        # A line cut by a kill has no newline: end it, so that the next line stands alone.
        if os.path.isfile(self.path) and os.path.getsize(self.path):
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
            if cut:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n")
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc) -> None:
        self._file.close()


class Group:
    """This process's place among torchrun's: rank, world size, local rank; collectives over gloo."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, launched: bool = False):
        self.rank, self.world, self.local_rank, self.launched = rank, world, local_rank, launched
        self._marker: str | None = None

    @classmethod
    def from_environment(cls) -> "Group":
        """From torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); one process without them."""
        env = os.environ
        if "WORLD_SIZE" not in env:
            return cls()
        return cls(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), launched=True)

    def start(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)

    def stop(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def check_shared_folder(self, out: str) -> list[int]:
        """The ranks that do not see a file rank 0 writes in ``out`` (none: a shared folder)."""
        if self.world == 1:
            return []
        name = self.broadcast(f".audiox-batch-{secrets.token_hex(8)}" if self.rank == 0 else None)
        self._marker = os.path.join(out, name)
        if self.rank == 0:
            with open(self._marker, "w", encoding="utf-8"):
                pass
        self.gather(None)  # the marker exists before anyone looks
        seen = self.gather(os.path.isfile(self._marker))
        return [r for r, ok in enumerate(seen) if not ok]

    def remove_shared_marker(self) -> None:
        if self._marker is not None and self.rank == 0 and os.path.exists(self._marker):
            os.unlink(self._marker)
