"""Local model files: where they come from, and the sentence encoder several layers share.

The MiniLM encoder serves the learned start policy (``routing``), the learned answer score
(``conformal``) and the specialist heads. This is a low layer: it imports nothing else of
the package but its exceptions.
"""

from routenlp_ray.models.encoder import EMBEDDING_DIM, MINILM_SOURCE, SentenceEncoder
from routenlp_ray.models.sources import PACKAGE_SCHEME, resolve_model_source

__all__ = ["EMBEDDING_DIM", "MINILM_SOURCE", "PACKAGE_SCHEME", "SentenceEncoder", "resolve_model_source"]
