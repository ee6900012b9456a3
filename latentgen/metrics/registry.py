"""How each stage is evaluated: a small registry from model class to its evaluation spec.

A new prior is evaluated like the others once it is registered::

    @register(MyPrior)
    def _my_prior(model):
        return EvalSpec(family="my_prior", label="My prior", step_option="num_inference_steps")

``family`` names its list of step counts in ``conf/compare.yaml`` (``steps.<family>``);
``step_option`` is the sampling option that sets the number of sampling steps (None: no sweep);
``likelihood`` marks priors whose test NLL is reported: exact token log-likelihoods from
``logits(tokens, labels)``, or with ``nll_bound`` an upper bound from ``nll_bound(tokens, labels)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from latentgen.models.ardm import ARDMPrior
from latentgen.models.autoregressive_priors import PixelCNNPrior, TransformerPrior
from latentgen.models.discrete_diffusion import DiscreteDiffusionPrior
from latentgen.models.latent_diffusion import LatentDiffusion
from latentgen.models.stage1_base import Stage1Module


@dataclass(frozen=True)
class EvalSpec:
    family: str
    label: str
    kind: str = "prior"  # "prior" (sample quality) or "stage1" (reconstructions)
    step_option: str | None = None
    sweep_options: dict[str, Any] = field(default_factory=dict)
    likelihood: bool = False
    nll_bound: bool = False
    sampler: str = "ancestral"

    def sampler_text(self, model: nn.Module, options: dict[str, Any]) -> str:
        """Sampler and number of steps with ``options`` over the model's own settings."""
        merged = {**getattr(model, "sampling", {}), **{k: v for k, v in options.items() if v is not None}}
        if self.kind != "prior":
            return "reconstruction"
        if self.step_option is None:
            grid = getattr(model, "grid_shape", None)
            return f"{self.sampler}, {math.prod(grid)} steps" if grid else self.sampler
        return f"{merged.get('sampler', self.sampler)}, {merged.get(self.step_option)} steps"


_REGISTRY: dict[type, Callable[[nn.Module], EvalSpec]] = {}


def register(cls: type) -> Callable[[Callable[[nn.Module], EvalSpec]], Callable[[nn.Module], EvalSpec]]:
    """Decorator: ``fn(model) -> EvalSpec`` describes how to evaluate instances of ``cls``."""
    def deco(fn: Callable[[nn.Module], EvalSpec]) -> Callable[[nn.Module], EvalSpec]:
        _REGISTRY[cls] = fn
        return fn
    return deco


def eval_spec(model: nn.Module) -> EvalSpec:
    """The spec of the most specific registered class of ``model``."""
    for cls in type(model).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls](model)
    known = ", ".join(sorted(c.__name__ for c in _REGISTRY))
    raise ValueError(f"{type(model).__name__} cannot be evaluated: pass the checkpoint of one of {known} "
                     "(or register an EvalSpec for it in latentgen.metrics.registry)")


@register(Stage1Module)
def _stage1(model: nn.Module) -> EvalSpec:
    return EvalSpec(type(model).__name__.lower(), f"{model.family_label} (stage 1)", kind="stage1")


@register(PixelCNNPrior)
def _pixelcnn(model: nn.Module) -> EvalSpec:
    return EvalSpec("pixelcnn", "PixelCNN", likelihood=True)


@register(TransformerPrior)
def _transformer(model: nn.Module) -> EvalSpec:
    return EvalSpec("transformer", "Transformer", likelihood=True)


@register(LatentDiffusion)
def _ldm(model: nn.Module) -> EvalSpec:
    return EvalSpec("ldm", "Latent DDPM", step_option="num_inference_steps", sweep_options={"sampler": "ddim"},
                    sampler="ddim")


@register(DiscreteDiffusionPrior)
def _discrete(model: nn.Module) -> EvalSpec:
    if model.process_name == "absorbing":
        return EvalSpec("maskgit", "MaskGIT", step_option="num_inference_steps", sampler="maskgit")
    return EvalSpec("dd_uniform", "Uniform discrete diffusion", step_option="num_inference_steps", sampler="uniform")


@register(ARDMPrior)
def _ardm(model: nn.Module) -> EvalSpec:
    return EvalSpec("ardm", "ARDM", step_option="num_inference_steps", likelihood=True, nll_bound=True,
                    sampler="ardm")
