"""neuroplastic: does a concept removed from a language model stay removed?

Rank the MLP neurons most salient for a concept, ablate them through TransformerLens hook points,
retrain with the ablation held, and trace where the concept comes back.
"""

from neuroplastic.errors import NeuroplasticError

__version__ = "0.1.0"
__all__ = ["NeuroplasticError", "__version__"]
