"""``latentgen-wandb-sync RUN_DIR``: upload all offline W&B segments of a run to one W&B run, in order.

Every process of a restarted run (requeue, kill and the same command again) writes its own
``wandb/offline-run-<YYYYMMDD_HHMMSS>-<run id>`` folder with the same run id. This command groups the
folders of ``RUN_DIR/wandb`` (or of a ``wandb/`` folder given directly) by run id, orders each group
by the start time in the folder names, and runs one ``wandb sync --id <run id> <folders in order>``
per run id: wandb >= 0.31 syncs the files of one run sequentially in order of start time when they
are given to one ``wandb sync``. ``--dry-run`` prints the commands without running them, each after
the ``trainer/global_step`` range its segments logged. The first command that fails stops the
upload with an error; later run ids are not synced.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SEGMENT_NAME = re.compile(r"offline-run-(\d{8}_\d{6})-(.+)")
MIN_WANDB = (0, 31)
LOG_BLOCK, CHUNK_HEADER = 32768, 7  # the .wandb file is a LevelDB-style log of protobuf records


class SyncError(RuntimeError):
    """A run dir without offline segments, a damaged segment, or a failed ``wandb sync``."""


def wandb_folder(path: str | Path) -> Path:
    """``path/wandb`` for a run dir, ``path`` itself for a ``wandb/`` folder."""
    path = Path(path)
    folder = path / "wandb" if (path / "wandb").is_dir() else path
    if not folder.is_dir():
        raise SyncError(f"{path} does not exist: give a run dir (with a wandb/ folder) or its wandb/ folder")
    return folder


def offline_segments(path: str | Path) -> dict[str, list[Path]]:
    """Run id -> its ``offline-run-*`` folders, oldest first (folder timestamp, then file time)."""
    folder = wandb_folder(path)
    segments: dict[str, list[Path]] = defaultdict(list)
    for seg in folder.iterdir():
        match = SEGMENT_NAME.fullmatch(seg.name)
        if match and seg.is_dir() and not seg.is_symlink():
            if not any(seg.glob("*.wandb")):
                raise SyncError(f"{seg} holds no .wandb file (the process died before W&B started?): "
                                "move that folder out of the way and run this command again")
            segments[match.group(2)].append(seg)
    if not segments:
        raise SyncError(f"no offline W&B runs (offline-run-*) in {folder}: was the run logged with "
                        "logger=wandb in offline mode?")

    def started(seg: Path) -> tuple[str, float]:
        return SEGMENT_NAME.fullmatch(seg.name).group(1), min(f.stat().st_mtime for f in seg.glob("*.wandb"))

    return {run_id: sorted(segs, key=started) for run_id, segs in sorted(segments.items())}


def history_rows(wandb_file: str | Path) -> Iterator[dict[str, Any]]:
    """The history rows (``wandb.log`` calls) of a ``.wandb`` file, as ``{key: value}``."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = Path(wandb_file).read_bytes()
    if data and data[:4] != b":W&B":  # empty: the process died before W&B wrote anything
        raise SyncError(f"{wandb_file} is not a W&B transaction log: move it out of the way")
    pos, record = CHUNK_HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        if LOG_BLOCK - pos % LOG_BLOCK < CHUNK_HEADER:  # block trailer too short for a chunk: padding
            pos += LOG_BLOCK - pos % LOG_BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if pos + CHUNK_HEADER + length > len(data):  # cut off mid-write (a killed process)
            return
        record += data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            parsed, record = Record.FromString(record), b""
            if parsed.WhichOneof("record_type") == "history":
                yield {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in parsed.history.item}


def logged_steps(segment: Path, key: str = "trainer/global_step") -> list[int]:
    """Values of ``key`` in the history rows of an offline segment, in logging order."""
    return [int(row[key]) for f in sorted(segment.glob("*.wandb")) for row in history_rows(f) if key in row]


def sync_commands(segments: dict[str, list[Path]], wandb_args: Sequence[str] = ()) -> list[list[str]]:
    """One ``wandb sync --id <run id> [wandb_args] <segments oldest first>`` per run id."""
    return [["wandb", "sync", "--id", run_id, *wandb_args, *map(str, segs)]
            for run_id, segs in segments.items()]


def check_wandb_version(version: str) -> None:
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers < MIN_WANDB:
        raise SyncError(f"wandb {version} is installed; syncing the segments of one run in order needs "
                        f"wandb >= {'.'.join(map(str, MIN_WANDB))}: `pip install -U wandb`")


def run_commands(commands: Sequence[Sequence[str]]) -> None:
    for cmd in commands:
        print(f"$ {shlex.join(cmd)}", flush=True)
        code = subprocess.run(cmd).returncode
        if code != 0:
            run_id = cmd[cmd.index("--id") + 1]
            raise SyncError(f"`wandb sync` failed (exit {code}) for run {run_id}; the runs after it were not "
                            "synced. Fix the cause printed above (e.g. `wandb login` when no API key is "
                            "configured) and run this command again")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="latentgen-wandb-sync",
        description="Upload all offline W&B segments of a run to one W&B run, in order: one "
                    "`wandb sync --id <run id> <segments>` per run id.")
    parser.add_argument("path", help="a run dir (logs/<task>/runs/<name>) or its wandb/ folder")
    parser.add_argument("--dry-run", action="store_true", help="print the wandb commands, run nothing")
    parser.add_argument("-p", "--project", help="passed to wandb sync")
    parser.add_argument("-e", "--entity", help="passed to wandb sync")
    args = parser.parse_args(argv)
    wandb_args = [*(["--project", args.project] if args.project else []),
                  *(["--entity", args.entity] if args.entity else [])]
    try:
        segments = offline_segments(args.path)
        commands = sync_commands(segments, wandb_args)
        if args.dry_run:
            for run_id, segs in segments.items():
                for seg in segs:
                    steps = logged_steps(seg)
                    span = f"{min(steps)}..{max(steps)}" if steps else "none"
                    print(f"# run {run_id}: {seg.name} logged trainer/global_step {span}")
            print("\n".join(shlex.join(cmd) for cmd in commands))
            return 0
        import wandb

        check_wandb_version(wandb.__version__)
        run_commands(commands)
    except SyncError as e:
        print(f"latentgen-wandb-sync: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
