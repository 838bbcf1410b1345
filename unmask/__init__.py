"""unmask: fast inference and training for diffusion language models."""
from unmask.generation import generate
from unmask.likelihood import loglikelihood
from unmask.models.checkpoints import load_model

__all__ = ["generate", "load_model", "loglikelihood"]
__version__ = "0.1.0"
