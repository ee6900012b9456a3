"""``latentgen-launch``: submit a two-stage pipeline to Slurm, stage 2 waiting for stage 1 (afterok).

    latentgen-launch --stage1 vqvae_mnist --stage2 ldm_mnist --sweep model.optimizer.lr=1e-4,3e-4 \\
        --launcher bigred200 trainer=ddp

* One job for stage 1 and one per stage-2 experiment and sweep point, each with an explicit
  ``hydra.run.dir`` under ``<log dir>/pipelines/<name>/`` (known before it starts, stable across
  requeues), resources from the Hydra launcher preset (``conf/hydra/launcher/<launcher>.yaml``).
* Stage 1 is what the stage-2 jobs will look up in the artefact store, asked from the same resolver
  they use (:func:`latentgen.stages.resolver.stage1_dependency`). If it is stored already, no stage-1
  job is submitted. Otherwise the stage-1 job runs the resolver's training command for it and then
  ``latentgen-artifacts register`` (the same checks, the same key); the stage-2 jobs get
  ``--dependency=afterok:<stage-1 job>`` and find stage 1 in the store by that key (their
  ``stage1.overrides`` carry the pipeline's overrides, so they compose the same stage-1 config).
  All W&B runs of the pipeline share the group ``<name>``.
* Safe to re-run: ``pipeline.json`` in the pipeline dir keeps the job ids; a job that is completed,
  running or pending is not submitted again, a failed/cancelled/timed-out one is (in the same run dir,
  so it resumes from its checkpoints).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from latentgen.launch import slurm
from latentgen.stages.commands import hydra_value

if TYPE_CHECKING:
    from latentgen.stages.resolver import Dependency

UNSAVED = ("state", "text")
# config groups the stage-1 training takes from the job that needs it (stage1.debug, its logger)
INHERITED_GROUPS = ("debug", "logger")


@dataclass
class Job:
    key: str
    experiment: str
    overrides: list[str]
    run_dir: str
    script: str
    job_id: str | None = None
    submitted: str | None = None
    depends_on: str | None = None
    # not saved: the state is asked from Slurm, the script text is in `script`
    state: str = field(default=slurm.UNKNOWN_STATE, compare=False)
    text: str = field(default="", compare=False, repr=False)

    @property
    def log(self) -> str:
        return f"{self.run_dir}/slurm-{self.job_id or '%j'}.out"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="latentgen-launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage1", help="stage-1 experiment (default: the stage-2 config's stage1.experiment)")
    p.add_argument("--stage2", action="append", default=[], help="stage-2 experiment (repeatable)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="stage-2 sweep; several --sweep form a grid (Hydra sweep syntax, e.g. range(1,4))")
    p.add_argument("--launcher", default="slurm", help="preset in conf/hydra/launcher (default: slurm)")
    p.add_argument("--name", help="pipeline name: its dir, state file and W&B group (default from stages)")
    p.add_argument("--stage1-override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stage2-override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--python", default=sys.executable, help="python of the jobs (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="write and print the scripts, submit nothing")
    p.add_argument("--status", action="store_true", help="only show the pipeline's jobs and their states")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every job, e.g. trainer=ddp")
    args = p.parse_intermixed_args(argv)
    if not args.stage1 and not args.stage2:
        p.error("give --stage1 and/or --stage2")
    return args


def sweep_points(sweeps: list[str]) -> list[list[str]]:
    """Grid of override lists from Hydra sweep overrides (``k=a,b``, ``k=range(3)``, ``k=choice(..)``)."""
    if not sweeps:
        return [[]]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes = []
    for o in OverridesParser.create().parse_overrides(sweeps):
        key = o.get_key_element()
        axes.append([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line])
    return [list(point) for point in itertools.product(*axes)]


def slug(overrides: list[str]) -> str:
    """Dir-name-safe text for a sweep point: ``model.optimizer.lr=0.001`` -> ``model.optimizer.lr-0.001``."""
    text = "_".join(o.lstrip("+~").replace("/", ".") for o in overrides)
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)[:120]


class Pipeline:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stage2_exps = args.stage2
        self.points = sweep_points(args.sweep)
        self.stage1_exp = args.stage1 or self._stage1_of(args.stage2[0])
        self.name = args.name or "-".join([self.stage1_exp, *self.stage2_exps])
        probe = self._compose(self.stage1_exp, args.stage1_override)
        self.log_dir = Path(str(probe.paths.log_dir)).resolve()
        self.root = self.log_dir / "pipelines" / self.name
        self.state_file = self.root / "pipeline.json"
        self.jobs: dict[str, Job] = {}
        if self.state_file.is_file():
            self.jobs = {k: Job(**v) for k, v in json.loads(self.state_file.read_text())["jobs"].items()}
        self.stage1_key = f"stage1-{self.stage1_exp}"
        self.stage1 = self._stage1_dependency()

    def _compose(self, experiment: str, extra: list[str]):
        from latentgen.utils.compose import compose_config

        return compose_config([f"+experiment={experiment}", f"hydra/launcher={self.args.launcher}",
                               *self.args.overrides, *extra])

    def _stage1_of(self, experiment: str) -> str:
        cfg = self._compose(experiment, self.args.stage2_override)
        s1 = cfg.get("stage1", {}).get("experiment") if cfg.get("stage1") else None
        if not s1:
            raise SystemExit(f"--stage1 is missing and {experiment} has no stage1.experiment: pass --stage1 NAME")
        return s1

    # -- stage 1: the model every stage-2 job resolves from the store ----------------------------------
    def _stage1_overrides(self) -> list[str]:
        """What stage 1 is trained with besides its experiment: the pipeline's overrides (the debug
        preset and logger follow the jobs' own) and ``--stage1-override``."""
        inherited = [o for o in self.args.overrides if o.split("=", 1)[0].lstrip("+") not in INHERITED_GROUPS]
        return [*inherited, *self.args.stage1_override]

    def _stage2_stage1_override(self, cfg) -> str:
        """``stage1.overrides=[...]`` for a stage-2 job: its experiment's own, then the pipeline's."""
        own = list(cfg.stage1.get("overrides") or [])
        return "stage1.overrides=[" + ",".join(hydra_value(o) for o in [*own, *self._stage1_overrides()]) + "]"

    def _stage1_dependency(self) -> Dependency:
        """The stage-1 model the pipeline's stage-2 jobs will look up, asked from the resolver the way
        they ask it when they run (one and the same for all of them)."""
        from omegaconf import OmegaConf

        from latentgen.stages.resolver import stage1_dependency

        found: dict[str, Dependency] = {}
        for exp in self.stage2_exps:
            for point in self.points:
                cfg = self._compose(exp, [*self.args.stage2_override, *point])
                if not cfg.get("stage1"):
                    continue
                want = cfg.stage1.get("experiment")
                if want and want != self.stage1_exp:
                    raise SystemExit(f"{exp} builds on stage1.experiment={want}, but this pipeline's stage 1 is "
                                     f"{self.stage1_exp}: drop --stage1 or choose a matching stage-2 experiment")
                cfg = self._compose(exp, [*self.args.stage2_override, *point, self._stage2_stage1_override(cfg)])
                if cfg.stage1.get("ckpt_path"):
                    raise SystemExit(f"{exp} sets stage1.ckpt_path: the pipeline trains stage 1 into the artefact "
                                     "store and its stage-2 jobs find it there; drop stage1.ckpt_path")
                dep = stage1_dependency(cfg.stage1, cfg.paths)
                found.setdefault(dep.key, dep)
        if not found:  # no stage-2 job builds on a stage 1: train the one --stage1 names
            cfg = self._compose(self.stage1_exp, self.args.stage1_override)
            spec = OmegaConf.create({"experiment": self.stage1_exp, "overrides": self._stage1_overrides(),
                                     "debug": "inherit"})
            dep = stage1_dependency(spec, cfg.paths)
            found[dep.key] = dep
        if len(found) > 1:
            raise SystemExit(f"the stage-2 jobs build on {len(found)} different stage-1 models ({', '.join(found)}): "
                             "a pipeline trains one stage 1; sweep stage-1 settings in separate pipelines")
        return next(iter(found.values()))

    # -- jobs ------------------------------------------------------------------------------------
    def plan(self) -> list[Job]:
        """The stage-1 job (unless its model is in the store already and no job made it), then one
        stage-2 job per experiment and sweep point."""
        jobs = []
        if not self.stage1.stored or self.stage1_key in self.jobs:
            jobs.append(self._stage1_job())
        for exp in self.stage2_exps:
            for point in self.points:
                key = f"stage2-{exp}" + (f"-{slug(point)}" if point else "")
                jobs.append(self._stage2_job(key, exp, [*self.args.stage2_override, *point]))
        return jobs

    def _stage1_job(self) -> Job:
        """The resolver's training command for the stage-1 model, then its registration in the store
        under the key the stage-2 jobs look up."""
        from omegaconf import OmegaConf

        dep, run_dir = self.stage1, self.root / self.stage1_key
        command = dep.command(run_dir, self.args.python)
        if OmegaConf.select(dep.run_cfg, "logger.wandb") is not None:
            command.append(f"logger.wandb.group={hydra_value(self.name)}")
        register = [self.args.python, "-m", "latentgen.stages.artifact_cli", "register", str(run_dir),
                    "--artifact-dir", str(dep.paths["artifact_dir"]), "--key", dep.key]
        cfg = self._compose(self.stage1_exp, self.args.stage1_override)  # its resources
        return self._job(self.stage1_key, self.stage1_exp, cfg, run_dir, command, after=[register])

    def _stage2_job(self, key: str, exp: str, extra: list[str]) -> Job:
        from omegaconf import OmegaConf

        cfg = self._compose(exp, extra)  # fails early, with Hydra's message, on a bad override
        run_dir = self.root / key
        overrides = [f"+experiment={exp}", *self.args.overrides, *extra]
        if cfg.get("stage1"):
            overrides.append(self._stage2_stage1_override(cfg))
        overrides.append(f"hydra.run.dir={hydra_value(run_dir)}")
        if OmegaConf.select(cfg, "logger.wandb") is not None:
            overrides.append(f"logger.wandb.group={hydra_value(self.name)}")
        return self._job(key, exp, cfg, run_dir, [self.args.python, "-m", "latentgen.train", *overrides])

    def _job(self, key: str, exp: str, cfg, run_dir: Path, command: list[str],
             after: list[list[str]] | None = None) -> Job:
        from omegaconf import OmegaConf

        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        script = slurm.render_script(
            title=f"latentgen pipeline {self.name}: {key} (written by latentgen-launch)",
            job_name=f"lg-{key}"[:64], options=slurm.sbatch_options(launcher),
            output=run_dir / "slurm-%j.out", chdir=Path.cwd(), setup=launcher.get("setup") or [],
            command=command, srun_args=launcher.get("srun_args") or [], after=after or [],
        )
        path = self.root / "scripts" / f"{key}.sbatch"
        return Job(key=key, experiment=exp, overrides=command[3:], run_dir=str(run_dir), script=str(path),
                   text=script)

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"name": self.name, "launcher": self.args.launcher, "updated": _now(),
                "jobs": {k: {f: v for f, v in asdict(j).items() if f not in UNSAVED} for k, j in self.jobs.items()}}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    def run(self) -> list[Job]:
        planned = self.plan()
        known = {k: j.job_id for k, j in self.jobs.items() if j.job_id}
        states = slurm.job_states(known.values()) if known and not self.args.dry_run else {}
        s1 = planned[0] if planned and planned[0].key == self.stage1_key else None
        if self.stage1.stored:
            print(f"stage 1 {self.stage1.key} ({self.stage1.experiment}) is in the artefact store: no stage-1 job "
                  "is submitted, the stage-2 jobs start at once")
        s1_resubmitted = False
        for job in planned:
            old = self.jobs.get(job.key)
            state = states.get(old.job_id, slurm.UNKNOWN_STATE) if old and old.job_id else None
            if job is not s1 and state == "PENDING" and s1_resubmitted:
                slurm.cancel([old.job_id])  # waits on a failed stage 1: re-chain it to the new one
                state = "CANCELLED"
            done = state in slurm.ACTIVE_STATES or state == slurm.DONE_STATE or (job is s1 and self.stage1.stored)
            if old and old.job_id and done:
                if old.overrides != job.overrides:
                    print(f"note: {job.key} runs as job {old.job_id} with other overrides; not resubmitted "
                          "(use another --name for a new pipeline)")
                old.state = state
                self.jobs[job.key] = old
                continue
            dependency = None
            if s1 is not None and job is not s1 and not self.stage1.stored and self.jobs[s1.key].state != slurm.DONE_STATE:
                dependency = f"afterok:{self.jobs[s1.key].job_id or '<stage-1 job id>'}"
            self._submit(job, dependency, previous=state)
            s1_resubmitted |= job is s1
        return [self.jobs[j.key] for j in planned]

    def _submit(self, job: Job, dependency: str | None, previous: str | None) -> None:
        text = job.text
        Path(job.script).parent.mkdir(parents=True, exist_ok=True)
        Path(job.script).write_text(text)
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)  # sbatch needs the --output dir
        job.depends_on = dependency
        if self.args.dry_run:
            print(f"--- {job.script}{f'  (sbatch --dependency={dependency})' if dependency else ''}\n{text}")
            job.job_id, job.state = None, "DRY-RUN"
            self.jobs[job.key] = job
            return
        job.job_id = slurm.submit(Path(job.script), dependency)
        job.submitted, job.state = _now(), "SUBMITTED" if previous is None else f"RESUBMITTED (was {previous})"
        self.jobs[job.key] = job
        self.save()  # after every submission: a re-run never loses a job id

    def report(self, jobs: list[Job]) -> None:
        print(f"pipeline {self.name}  (state: {self.state_file})")
        print(f"W&B group: {self.name}")
        for job in jobs:
            dep = f"  after {job.depends_on}" if job.depends_on else ""
            print(f"  {job.key:<40} job {job.job_id or '-':<8} {job.state}{dep}")
            print(f"      run dir: {job.run_dir}\n      log:     {job.log}")


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def status(pipe: Pipeline) -> list[Job]:
    if not pipe.jobs:
        raise SystemExit(f"no pipeline state at {pipe.state_file}: nothing was submitted under this name")
    states = slurm.job_states(j.job_id for j in pipe.jobs.values() if j.job_id)
    for job in pipe.jobs.values():
        job.state = states.get(job.job_id, slurm.UNKNOWN_STATE)
    return list(pipe.jobs.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        pipe = Pipeline(args)
        jobs = status(pipe) if args.status else pipe.run()
    except (slurm.SlurmError, HydraException, OmegaConfBaseException) as err:
        print(f"latentgen-launch: {err}", file=sys.stderr)
        return 2
    pipe.report(jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
