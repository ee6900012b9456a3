"""Which runs `latentgen.compare` picks from a logs folder: the newest run or sweep per experiment."""

from __future__ import annotations

from pathlib import Path

from latentgen.metrics.scan import PriorCheckpoint, choose_group, latest_launches, launch_of


def _prior(run: str, mtime: float, cls: str = "LatentDiffusionPrior", sha: str = "aa" * 32) -> PriorCheckpoint:
    return PriorCheckpoint(Path(run) / "checkpoints" / "last.ckpt", run, cls, sha, mtime)


def test_launch_of_groups_sweep_jobs_and_keeps_single_runs_apart() -> None:
    assert launch_of("ldm_mnist/runs/2026-11-21_22-17-46") == ("ldm_mnist", "ldm_mnist/runs/2026-11-21_22-17-46")
    assert launch_of("ldm_mnist/multiruns/2026-11-21_10-00-00/3") == (
        "ldm_mnist", "ldm_mnist/multiruns/2026-11-21_10-00-00")
    assert launch_of("/elsewhere/x") == ("/elsewhere/x", "/elsewhere/x")


def test_latest_launches_keeps_newest_run_or_whole_newest_sweep(caplog) -> None:
    old_eps = _prior("ldm_mnist/runs/2026-11-21_22-17-46", 1.0)
    new_v = _prior("ldm_mnist/runs/2026-11-21_22-30-03", 2.0)
    old_sweep = [_prior(f"maskgit_mnist/multiruns/2026-11-20_09-00-00/{i}", 3.0 + i, "DiscreteDiffusionPrior")
                 for i in range(2)]
    new_sweep = [_prior(f"maskgit_mnist/multiruns/2026-11-21_09-00-00/{i}", 10.0 - i, "DiscreteDiffusionPrior")
                 for i in range(3)]
    # another prior class logged under the same task name is not hidden by the newer LDM run
    gpt = _prior("ldm_mnist/runs/2026-11-20_08-00-00", 0.5, "TransformerPrior")
    priors = [old_eps, new_v, *old_sweep, *new_sweep, gpt]
    with caplog.at_level("INFO"):
        kept = latest_launches(priors)
    assert kept == [new_v, *new_sweep, gpt]
    assert "2026-11-21_22-17-46" in caplog.text and "runs=all" in caplog.text


def test_latest_filter_applies_inside_the_chosen_stage1_group() -> None:
    on_a = _prior("ldm_mnist/runs/2026-11-20_00-00-00", 1.0, sha="a" * 64)
    on_b = _prior("ldm_mnist/runs/2026-11-21_00-00-00", 2.0, sha="b" * 64)
    sha, group = choose_group([on_a, on_b], "aaaa")
    # an older run stays the latest of its own stage-1 group
    assert sha == "a" * 64 and latest_launches(group) == [on_a]
