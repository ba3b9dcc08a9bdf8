"""neuroplastic: does a concept removed from a language model stay removed?

Rank the MLP neurons most salient for a concept, ablate them through TransformerLens hook points,
retrain with the ablation held, and trace where the concept comes back.

Importing the package is light (no torch); the core modules need no optional extra, and what
needs one (the embedded model and corpus, the report's plots) raises a ``MissingExtraError``
naming it.
"""

from neuroplastic.errors import NeuroplasticError
from neuroplastic.extras import MissingExtraError

__version__ = "0.1.0"
__all__ = ["MissingExtraError", "NeuroplasticError", "__version__"]
