"""mist-debias: closed-form single and intersectional debiasing of Stable Diffusion models."""

__version__ = "0.1.0"
