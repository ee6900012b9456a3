"""Side-by-side comparison: ``python -m latentgen.compare [logs_dir=PATH] [stage1_sha=PREFIX]``.

Scans a logs folder for stage-2 checkpoints, takes the priors of one stage 1 and evaluates each
(with step sweeps for the diffusion priors) next to the stage-1 reconstruction ceiling and the
real-data floor, all with the same N and classifier. Writes ``comparison.md``,
``comparison.json`` and ``fid_vs_steps.png`` to the run dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from latentgen.metrics.eval_data import resolve_data
from latentgen.metrics.eval_setup import make_evaluator, pick_device, sampling_options
from latentgen.metrics.plots import plot_fid_vs_steps
from latentgen.metrics.registry import EvalSpec, eval_spec
from latentgen.metrics.report import finite_metrics, fmt, markdown_table
from latentgen.metrics.scan import choose_group, find_priors, latest_launches
from latentgen.models.prior_base import PriorModule
from latentgen.sampling.from_checkpoint import (
    load_prior,
    printable_options,
    sampler_options,
    with_guidance_classifier,
)
from latentgen.utils import resolvers
from latentgen.utils.pylogger import RankedLogger
from latentgen.utils.run import extras

log = RankedLogger(__name__)

COLUMNS = ["Model", "Run", "Sampler / steps", "FID-LeNet", "KID-LeNet", "Classifier score",
           "Class coverage", "NLL (bits/token)", "Sampling time (s)"]


def sweep(model: PriorModule, spec: EvalSpec, steps: DictConfig, base: dict[str, Any],
          samplers: DictConfig | None = None) -> list[dict[str, Any]]:
    """Sampling options to evaluate: one per step count of the family (and per sampler where ``samplers``
    lists several for it), plus the model's own setting (in increasing number of steps)."""
    counts = list(steps.get(spec.family) or []) if spec.step_option else []
    names = list((samplers or {}).get(spec.family) or []) if counts else []
    variants = [{"sampler": name} for name in names] or [spec.sweep_options]
    runs = [{**base, **variant, spec.step_option: int(s)} for variant in variants for s in counts]
    if spec.sampler_text(model, base) not in {spec.sampler_text(model, o) for o in runs}:
        runs.append(dict(base))
    if spec.step_option:
        runs.sort(key=lambda o: step_count(model, spec, o))
    return runs


def step_count(model: PriorModule, spec: EvalSpec, options: dict[str, Any]) -> int:
    """Sampling steps with ``options`` over the model's own settings."""
    return int({**model.sampling, **options}[spec.step_option])


def table_row(model: str, run: str, sampler: str, m: dict[str, float]) -> list[Any]:
    # one KID subset (all N images on both sides) has no spread to report
    kid = fmt(m["kid_lenet_mean"])
    if m["kid_lenet_std"] > 0:
        kid += f" ± {fmt(m['kid_lenet_std'], 2)}"
    return [model, run, sampler, m["fid_lenet"], kid, m["classifier_score"], m["class_coverage"],
            m.get("bits_per_token"), m.get("sampling_time_s")]


def write_markdown(path: Path, header: dict[str, Any], rows: list[dict[str, Any]], png: str) -> None:
    lines = [f"# Priors on stage 1 `{header['stage1_sha'][:12]}`\n"]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    body = [table_row(r["model"], r["run"], r["sampler"], r["metrics"]) for r in rows]
    lines += ["", markdown_table(COLUMNS, body),
              "Lower FID/KID-LeNet is better. The real-data row (N training images against the same N test "
              "images) is what a perfect model of the training set scores at this N, train/test shift "
              "included; the stage-1 row (reconstructions of other test images) is what a perfect prior over "
              "this stage 1 would score if it matched the test split. The classifier score "
              "(Inception-Score analogue) runs from 1 to the number of classes, class coverage is the "
              "fraction of classes predicted at least once. KID is the mean over random subsets ± their std, "
              "or the single value when the subset is all N images. All scores use the classifier above and "
              "compare only at the same N.\n", f"![FID-LeNet vs sampling steps]({png})\n"]
    path.write_text("\n".join(lines))


def compare(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the priors of one stage-1 group; returns the rows and the paths written."""
    device = pick_device(cfg.device)
    if cfg.runs not in ("latest", "all"):
        raise ValueError(f"runs={cfg.runs!r}: use runs=latest (the newest run or sweep of each experiment) "
                         "or runs=all (every run found)")
    sha, group = choose_group(find_priors(cfg.logs_dir, cfg.patterns), cfg.stage1_sha)
    if cfg.runs == "latest":
        group = latest_launches(group)
    models = [(entry, load_prior(str(entry.path), device)) for entry in group]
    sources = {resolve_data(m, e.path, cfg.get("data")) for e, m in models}
    if len({s.target for s in sources}) != 1:
        raise ValueError(f"the priors of stage 1 {sha[:12]} record different datasets ({sorted({s.dataset for s in sources})}): "
                         "they cannot share one reference set")
    source = next(iter(sources))
    evaluator, classifier = make_evaluator(cfg, source, device)
    asked = sampling_options(cfg)

    jobs = []
    for entry, model in models:
        spec = eval_spec(model)
        base = {k: v for k, v in asked.items() if k in sampler_options(model)}
        base = with_guidance_classifier(model, base, cfg.guidance_classifier, cfg.paths, device)
        for i, options in enumerate(sweep(model, spec, cfg.steps, base, cfg.get("samplers"))):
            jobs.append((entry, model, spec, options, i == 0))
    log.info(f"Comparing {len(models)} priors ({len(jobs)} evaluations) on stage 1 {sha[:12]}, N={cfg.num_samples}")
    rows = [{"model": "Real data (train vs test)", "run": "–", "sampler": "–", "family": "floor",
             "metrics": finite_metrics(evaluator.real_floor())},
            {"model": "Stage-1 reconstructions", "run": "–", "sampler": "–", "family": "ceiling",
             "metrics": finite_metrics(evaluator.recon_ceiling(models[0][1]._require_stage1()))}]
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry, model, spec, options, with_nll in tqdm(jobs, desc="evaluating priors", disable=not cfg.show_progress):
        metrics, _ = evaluator.evaluate_prior(model, options, cfg.seed, cfg.batch_size, cfg.nll.max_items, with_nll)
        row = {"model": spec.label, "run": entry.run, "ckpt": str(entry.path), "family": spec.family,
               "sampler": spec.sampler_text(model, options), "options": printable_options(options), "metrics": finite_metrics(metrics)}
        rows.append(row)
        if spec.step_option:
            same_kind = sum(eval_spec(m).family == spec.family for _, m in models)
            label = spec.label if same_kind == 1 else f"{spec.label} ({entry.run})"
            if len((cfg.get("samplers") or {}).get(spec.family) or []) > 1:
                label = f"{label}, {({**model.sampling, **options}).get('sampler')}"
            curves.setdefault(label, []).append((step_count(model, spec, options), row["metrics"]["fid_lenet"]))

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_fid_vs_steps(curves, rows[1]["metrics"]["fid_lenet"], rows[0]["metrics"]["fid_lenet"],
                            out / "fid_vs_steps.png", title=f"FID-LeNet vs sampling steps (N={cfg.num_samples})")
    header = {"stage1_sha": sha, "logs_dir": str(cfg.logs_dir), "data": source.dataset,
              "reference": f"first {cfg.num_samples} test images", "num_samples": int(cfg.num_samples),
              "seed": int(cfg.seed), "classifier": str(classifier.ckpt_path),
              "classifier_test_accuracy": round(evaluator.classifier_accuracy(), 4)}
    md = out / "comparison.md"
    write_markdown(md, header, rows, png.name)
    js = out / "comparison.json"
    js.write_text(json.dumps({"header": header, "rows": rows, "config": OmegaConf.to_container(cfg.steps)},
                             indent=2, default=str, allow_nan=False))
    print(f"comparison: {md}\nplot:       {png}")
    return {"rows": rows, "header": header, "paths": {"md": md, "json": js, "png": png}}


@hydra.main(version_base="1.3", config_path=str(resolvers.CONF_DIR), config_name="compare.yaml")
def main(cfg: DictConfig) -> None:
    extras(cfg)
    compare(cfg)


if __name__ == "__main__":
    main()
