"""Sampling from a stage-2 checkpoint alone: option checking, seeded batches, real-image prefixes."""

from __future__ import annotations

import inspect

import hydra
import torch
from tqdm.auto import tqdm

from latentgen.models.prior_base import PriorModule
from latentgen.stages.checkpoints import load_model
from latentgen.utils.checkpoint_io import CheckpointError


def load_prior(ckpt: str, device: str | torch.device = "cpu") -> PriorModule:
    model = load_model(ckpt, map_location=device, purpose="sample")
    if not isinstance(model, PriorModule):
        fix = "sampling needs the checkpoint of a PixelCNN, transformer, latent DDPM or discrete diffusion run"
        if hasattr(model, "grad_log_prob"):  # a latent classifier samples nothing: it guides a latent DDPM
            fix = ("a latent classifier only guides a latent DDPM: pass the LDM's checkpoint as ckpt, with "
                   f"sampling.classifier_scale=<scale> guidance_classifier.ckpt_path={ckpt}")
        raise CheckpointError(ckpt, f"holds a {type(model).__name__}, not a stage-2 prior", fix)
    return model.to(device).eval()


def with_guidance_classifier(model: PriorModule, options: dict, spec, paths, device) -> dict:
    """``options`` plus the noise-conditional classifier that ``classifier_scale`` > 0 guides with.

    ``spec`` is the ``guidance_classifier`` config node: an explicit checkpoint, or the experiment found in
    the artefact store (trained now if missing) for the prior's own stage 1.
    """
    if not options.get("classifier_scale"):
        return options
    if "classifier_scale" not in sampler_options(model):
        raise ValueError(f"classifier_scale applies to the latent DDPM only, not {type(model).__name__}: "
                         "leave sampling.classifier_scale null")
    from latentgen.stages.guidance_classifier import resolve_guidance_classifier

    return {**options, "classifier": resolve_guidance_classifier(spec, paths, model, device)}


def printable_options(options: dict) -> dict:
    """Sampling options as they are recorded: a guidance classifier by its checkpoint."""
    return {k: (str(getattr(v, "ckpt_path", None) or type(v).__name__) if k == "classifier" else v)
            for k, v in options.items()}


def sampler_options(model: PriorModule) -> set[str]:
    params = inspect.signature(model.sample_latents).parameters
    return {k for k in params if k not in ("n", "labels", "generator", "prefix", "progress")}


def check_options(model: PriorModule, options: dict) -> None:
    allowed = sampler_options(model)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"sampling option(s) {unknown} do not apply to {type(model).__name__}; "
                         f"it accepts {sorted(allowed)} (leave the others null)")


@torch.no_grad()
def draw_samples(model: PriorModule, n: int, batch_size: int, seed: int, labels, options: dict,
                 prefix: torch.Tensor | None = None, prefix_fraction: float = 0.5, progress: bool = True):
    """``n`` decoded images, their labels and the raw samples (tokens or latents), all on the CPU.

    The same seed, options and batch size give the same samples.
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"num_samples={n} and batch_size={batch_size} must be positive")
    check_options(model, options)
    guide = options.get("classifier") if options.get("classifier_scale") else None
    all_labels = model.labels_for(n, labels, num_classes=getattr(guide, "num_classes", None))
    generator = torch.Generator(device=model.device).manual_seed(int(seed))
    images, raw = [], []
    for start in tqdm(range(0, n, batch_size), desc="sampling batches", disable=not progress):
        b = min(batch_size, n - start)
        y = None if all_labels is None else all_labels[start : start + b]
        if prefix is not None:
            if not hasattr(model, "complete"):
                raise ValueError(f"prefix completion needs an autoregressive prior, not {type(model).__name__}")
            h, w = model.grid_shape
            n_prefix = max(1, round(h * prefix_fraction)) * w
            s = model.complete(prefix[start : start + b].to(model.device), y, n_prefix, generator=generator,
                               **options)
        else:
            s = model.sample_latents(b, y, generator=generator, **options)
        raw.append(s.cpu())
        images.append(model.decode_samples(s).float().cpu())
    labels_out = None if all_labels is None else all_labels.cpu()
    return torch.cat(images), labels_out, torch.cat(raw)


@torch.no_grad()
def real_prefix_grids(model: PriorModule, n: int, split: str, data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token grids and labels of the first ``n`` real images of ``split``, encoded by the prior's stage 1."""
    data = (model.hparams.get("stage1_info") or {}).get("data")
    if not data:
        raise ValueError("this checkpoint does not record its dataset (stage1_info.data): retrain it with this "
                         "latentgen version to use prefix completion from real images")
    args = {k: v for k, v in data.items() if k != "target"}
    dm = hydra.utils.instantiate({"_target_": data["target"], **args, "data_dir": data_dir, "download": True})
    dm.prepare_data()
    dm.setup()
    x, y = next(iter(dm.dataloader(split, shuffle=False, batch_size=n)))
    stage1 = model._require_stage1()
    return stage1.encode_to_indices(x.to(model.device)), y
