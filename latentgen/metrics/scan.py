"""Find stage-2 checkpoints in a logs folder and group them by the stage 1 they were trained on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from latentgen.models.prior_base import PriorModule
from latentgen.stages.checkpoints import checkpoint_class
from latentgen.utils.checkpoint_io import load_checkpoint
from latentgen.utils.pylogger import RankedLogger

log = RankedLogger(__name__)


@dataclass(frozen=True)
class PriorCheckpoint:
    path: Path
    run: str  # the run dir relative to the logs folder
    class_name: str
    stage1_sha: str
    mtime: float


def read_prior(path: Path, logs_dir: Path) -> PriorCheckpoint | None:
    """The checkpoint's prior class and stage-1 SHA-256, or None if it is not a latentgen prior."""
    try:
        ckpt = load_checkpoint(path, purpose="compare priors", mmap=True)
        cls = checkpoint_class(ckpt, path)
    except Exception as e:  # unreadable, or not written by latentgen
        log.info(f"Skipping {path}: {e}")
        return None
    if not issubclass(cls, PriorModule):
        return None
    sha = ((ckpt.get("hyper_parameters") or {}).get("stage1_info") or {}).get("sha256")
    if not sha:
        log.warning(f"Skipping {path}: it does not record its stage-1 SHA-256 (stage1_info)")
        return None
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    try:
        run = str(run_dir.relative_to(logs_dir))
    except ValueError:
        run = str(run_dir)
    return PriorCheckpoint(path, run, cls.__name__, sha, path.stat().st_mtime)


def find_priors(logs_dir: str | Path, patterns: Sequence[str]) -> list[PriorCheckpoint]:
    """Every stage-2 checkpoint under ``logs_dir`` matching one of the glob ``patterns``."""
    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        raise FileNotFoundError(f"logs folder {logs_dir} does not exist: pass logs_dir=/path/to/logs")
    paths = sorted({p.resolve() for pattern in patterns for p in logs_dir.glob(pattern) if p.is_file()})
    priors = [p for p in (read_prior(path, logs_dir.resolve()) for path in paths) if p is not None]
    if not priors:
        raise FileNotFoundError(
            f"no stage-2 checkpoints under {logs_dir} match {list(patterns)}: train priors first, e.g. "
            "`python -m latentgen.train +experiment=pixelcnn_mnist`, or set logs_dir / patterns"
        )
    return priors


def launch_of(run: str) -> tuple[str, str]:
    """``(task, launch)`` of a run dir relative to the logs folder: ``ldm_mnist/runs/<time>`` is one
    launch; every job of ``ldm_mnist/multiruns/<time>/<n>`` belongs to the sweep ``.../multiruns/<time>``."""
    parts = Path(run).parts
    if len(parts) < 3 or Path(run).is_absolute():  # not laid out as <task>/<runs|multiruns>/<time>
        return run, run
    return parts[0], str(Path(*parts[:3]))


def latest_launches(priors: Sequence[PriorCheckpoint]) -> list[PriorCheckpoint]:
    """Per task (experiment) and prior class, only the priors of the newest launch: the last single run,
    or every job of the last sweep. Older runs of the same experiment are left out, and the log says which."""
    newest_mtime: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # (task, class) -> launch -> mtime
    for p in priors:
        task, launch = launch_of(p.run)
        launches = newest_mtime[task, p.class_name]
        launches[launch] = max(launches.get(launch, p.mtime), p.mtime)
    newest = {key: max(launches, key=launches.__getitem__) for key, launches in newest_mtime.items()}
    kept, dropped = [], []
    for p in priors:
        task, launch = launch_of(p.run)
        (kept if newest[task, p.class_name] == launch else dropped).append(p)
    if dropped:
        log.info(f"Leaving out {len(dropped)} older run(s) of the same experiments "
                 f"({', '.join(sorted(p.run for p in dropped))}); runs=all compares them too")
    return kept


def choose_group(priors: Sequence[PriorCheckpoint], stage1_sha: str | None) -> tuple[str, list[PriorCheckpoint]]:
    """The priors of one stage 1: the one whose SHA-256 starts with ``stage1_sha``, else the newest."""
    groups: dict[str, list[PriorCheckpoint]] = defaultdict(list)
    for p in priors:
        groups[p.stage1_sha].append(p)
    listing = "; ".join(f"{sha[:12]}: {', '.join(p.run for p in ps)}" for sha, ps in groups.items())
    if stage1_sha:
        matches = [sha for sha in groups if sha.startswith(str(stage1_sha))]
        if len(matches) != 1:
            raise ValueError(f"stage1_sha={stage1_sha} matches {len(matches)} of the stage-1 groups found "
                             f"({listing}): give a (longer) prefix of one of them")
        sha = matches[0]
    else:
        sha = max(groups, key=lambda s: max(p.mtime for p in groups[s]))
        if len(groups) > 1:
            log.info(f"{len(groups)} stage-1 groups found ({listing}); comparing the most recent, {sha[:12]} "
                     "(choose another with stage1_sha=...)")
    return sha, sorted(groups[sha], key=lambda p: (p.class_name, p.run))
