"""SAeUron: concept unlearning in text-to-image diffusion models with sparse autoencoders."""

__version__ = "0.1.0"
