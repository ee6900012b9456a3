"""The stage-1 family: what every stage-1 model offers the priors, and how a prior rebuilds its frozen one.

Every stage-1 model (the VQ-VAE, its VQGAN and FSQ variants, the KL autoencoder) is a
:class:`Stage1Module`. The priors and the latent cache use only this interface:

* ``encode(x)``: images ``[B, C, *spatial]`` in [0, 1] -> continuous latents ``[B, latent_dim, *grid]``
  (a VQ model's pre-quantisation latents; a KL autoencoder's posterior mean);
* ``decode_latents(z)``: such latents (or samples of a latent DDPM in their space) -> images in [0, 1];
* ``reconstruct(x)``: ``decode_latents(encode(x))``, what the reconstruction metrics score;
* ``latent_grid(spatial)``, ``latent_dim`` and ``discrete``;
* discrete models only: ``num_codes``, ``quantize(z) -> (z_q, indices, loss)``, ``encode_to_indices(x)``
  and ``decode_code(indices)``. A continuous model has ``num_codes = None`` and refuses them with a
  clear error, so a token prior on it fails before any training.

A prior keeps its stage 1 inside its own checkpoint (:class:`FrozenStage1Module`): ``stage1_hparams``
rebuild it and ``stage1_info["class"]`` names its class (absent in checkpoints written before the
family existed, which hold a VQ-VAE).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from latentgen.models.base import LatentGenModule, class_path

DEFAULT_STAGE1_CLASS = "latentgen.models.vqvae.VQVAE"


class Stage1Module(LatentGenModule):
    """Base of the stage-1 models; subclasses implement ``encode``, ``decode_latents``, ``latent_grid`` and
    set ``discrete``, ``family_label`` and ``latent_dim`` (and the token methods when discrete)."""

    discrete: bool = True
    family_label: str = "stage 1"
    num_codes: int | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent_grid(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> their reconstructions in [0, 1] (through the codebook for a discrete model)."""
        return self.decode_latents(self.encode(x))

    def check_images(self, x: torch.Tensor) -> None:
        """A clear error for a batch that is not ``[B, in_channels, *spatial]``."""
        channels = self.hparams.get("in_channels", 1)
        if x.dim() < 4 or x.shape[1] != channels:
            raise ValueError(f"{self.family_label} built for {channels}-channel images got a batch of shape "
                             f"{tuple(x.shape)}: set model.in_channels to the data's channels")

    @classmethod
    def require_discrete(cls, what: str = "this") -> None:
        """A clear error unless this stage 1 has tokens (``what`` names who needs them)."""
        if not cls.discrete:
            raise ValueError(
                f"{what} needs discrete tokens, but stage 1 is a {cls.family_label} with a continuous latent "
                "space and no codebook: use a VQ stage 1 (stage1.experiment=vqvae_<data>, vqgan_<data> or "
                "fsq_<data>), or a continuous prior on this one (+experiment=ldm_<data>)")

    # token API of the discrete models; a continuous model refuses it
    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.require_discrete("quantize()")
        raise NotImplementedError

    def encode_to_indices(self, x: torch.Tensor) -> torch.Tensor:
        self.require_discrete("encode_to_indices()")
        raise NotImplementedError

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        self.require_discrete("decode_code()")
        raise NotImplementedError


def stage1_class(name: str | None) -> type[Stage1Module]:
    """The stage-1 class a recorded class path names (only latentgen's own stage-1 classes)."""
    name = name or DEFAULT_STAGE1_CLASS
    module, _, cls_name = name.rpartition(".")
    if module.split(".")[0] != "latentgen":
        raise ValueError(f"stage-1 class {name} is not a latentgen model: the checkpoint was not written by latentgen")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"stage-1 class {name} does not exist in this latentgen version ({e}): use the version "
                         "that wrote the checkpoint, or retrain") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage1Module)):
        raise ValueError(f"{name} is not a stage-1 model class (a {Stage1Module.__name__})")
    return cls


def build_stage1(hparams: dict[str, Any], class_name: str | None = None) -> Stage1Module:
    """A stage-1 model of class ``class_name`` (default: the VQ-VAE) from its hyperparameters."""
    cls = stage1_class(class_name)
    try:
        return cls(**hparams)
    except TypeError as e:
        raise ValueError(f"hyperparameters that {cls.__name__} does not accept ({e}): is it a stage-1 checkpoint "
                         "of this latentgen version?") from e


def stage1_class_name(model: Stage1Module) -> str:
    return class_path(type(model))


class FrozenStage1Module(LatentGenModule):
    """A stage-2 model that keeps its frozen stage 1 inside its checkpoint, rebuilt from ``stage1_hparams``
    and the class ``stage1_info["class"]`` names."""

    def __init__(self, stage1_hparams: dict[str, Any] | None = None,
                 stage1_info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.stage1: Stage1Module | None = None
        if stage1_hparams is not None:
            self.stage1 = build_stage1(stage1_hparams, (stage1_info or {}).get("class")).eval().requires_grad_(False)
        self.cache_dir: str | None = None

    def attach_stage1(self, stage1: Stage1Module, cache_dir: str | None = None) -> None:
        """Copy the resolved stage-1 weights in (strictly) and freeze them."""
        own = self._require_stage1()
        if type(own) is not type(stage1):
            raise ValueError(f"this model was built for a {type(own).__name__} stage 1 but got a "
                             f"{type(stage1).__name__}: build it through the stage builder")
        own.load_state_dict(stage1.state_dict(), strict=True)
        own.eval().requires_grad_(False)
        self.cache_dir = cache_dir

    def _require_stage1(self) -> Stage1Module:
        if self.stage1 is None:
            raise RuntimeError(f"{type(self).__name__} was built without stage1_hparams: build it through the stage "
                               "builder, or load it from a latentgen checkpoint")
        return self.stage1

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage1 is not None:
            self.stage1.eval()  # a frozen stage 1 is always in eval mode
        return self
