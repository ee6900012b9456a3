"""latentgen: two-stage latent generative models (VQ-VAE stage 1, priors in its latent space)."""

__version__ = "0.1.0"
