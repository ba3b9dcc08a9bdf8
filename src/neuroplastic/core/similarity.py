"""Concept similarity between two sets of tokens (a neuron's top tokens, or a concept's tokens).

Lo et al. compare a neuron's top-5 activating tokens before and after retraining with FastText
vectors trained on lowercase text8. Lowercase text8 has no vector for most cased names ("Paris"
and "paris" merge, rare names are missing), which is exactly the concept under study. Here the
vectors are, by default, **the analysed model's own input embeddings** of the tokens (stored in
the run directory as ``token_embeddings.safetensors``): every token a neuron can fire on has one,
subword pieces of names included, and they are the vectors the model itself starts from.
Optionally, a sentence-embedding model (the offline all-MiniLM-L6-v2) embeds each token's text.

**The measure: cosine between the centroids of the two sets**, after two normalisations:

1. *Centering*: the mean vector of all stored tokens is subtracted first. Transformer embedding
   spaces are anisotropic (every pair of tokens has a high cosine, Ethayarajh 2019; Mu &
   Viswanath 2018), so raw cosines say little; after centering, unrelated sets score near 0.
2. *Unit length per token* before averaging, so a frequent token with a large norm does not
   outweigh the others. A token repeated in a top-k list counts once per occurrence: a neuron
   that fires on "Paris" five times is more about Paris than one that fires on it once.

Why centroids rather than the mean pairwise cosine: a set compared with itself scores exactly 1
(the mean pairwise cosine of a varied set with itself is well below 1, so "unchanged" would not be
recognisable), the score reads as "do these sets point the same way in embedding space", which
is what a concept is, and it costs O(n + m) per pair, so every neuron of a model can be compared
at once. The score is in [-1, 1]; NaN when a set has no known token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from neuroplastic.errors import NeuroplasticError

__all__ = ["TokenEmbeddings", "clean_token_text"]

_SUBWORD_MARKS = re.compile(r"^(##|Ġ|▁|Ċ)+")


def clean_token_text(token: str) -> str:
    """A token's readable text: subword markers (``##``, ``Ġ``, ``▁``) and outer spaces removed."""
    return _SUBWORD_MARKS.sub("", token.strip()).strip()


@dataclass
class TokenEmbeddings:
    """Unit vectors for a set of token ids, ready for set-to-set concept similarity.

    Build with :meth:`RunDir.embeddings <neuroplastic.store.rundir.RunDir.embeddings>` (the
    model's input embeddings), :meth:`from_vectors` (any
    vectors) or :meth:`from_sentence_model` (MiniLM on each token's text).
    """

    token_ids: Int[Tensor, " vocab"]  # sorted ascending
    unit: Float[Tensor, "vocab d"]  # centered (optionally) and L2-normalised
    source: str = "model input embeddings"

    @classmethod
    def from_vectors(
        cls,
        token_ids: Int[Tensor, " n"],
        vectors: Float[Tensor, "n d"],
        center: bool = True,
        source: str = "model input embeddings",
    ) -> TokenEmbeddings:
        """Center (over these tokens) and normalise ``vectors``; duplicate ids keep the first."""
        if token_ids.ndim != 1 or vectors.ndim != 2 or len(token_ids) != len(vectors):
            raise NeuroplasticError(
                f"token ids {tuple(token_ids.shape)} and vectors {tuple(vectors.shape)} do not "
                "match: expected [n] and [n, d]"
            )
        if len(token_ids) == 0:
            raise NeuroplasticError("no token embeddings given")
        ids, first = _unique_first(token_ids.long())
        vectors = vectors[first].double()
        if center:
            vectors = vectors - vectors.mean(0, keepdim=True)
        unit = torch.nn.functional.normalize(vectors, dim=-1).float()
        return cls(ids, unit, source)

    @classmethod
    def from_sentence_model(
        cls,
        tokens: Mapping[int, str],
        model_path: str | Path | None = None,
        batch_size: int = 256,
        center: bool = False,
    ) -> TokenEmbeddings:
        """Embed each token's text with a sentence-embedding model (default: offline MiniLM).

        Uses ``sentence_transformers`` when installed, else ``transformers`` with mean pooling
        (what all-MiniLM-L6-v2 does). Tokens whose text is empty after removing subword markers
        get no vector (they are then unknown to :meth:`similarity`).
        """
        name = "all-MiniLM-L6-v2" if model_path is None else str(model_path)
        if model_path is None:
            from neuroplastic.core.models import embedded_model_path

            model_path = embedded_model_path()
        texts = {int(t): clean_token_text(s) for t, s in tokens.items()}
        texts = {t: s for t, s in texts.items() if s}
        if not texts:
            raise NeuroplasticError("no token has any text to embed")
        ids = list(texts)
        vectors = _sentence_vectors([texts[t] for t in ids], str(model_path), batch_size)
        return cls.from_vectors(
            torch.tensor(ids),
            vectors,
            center=center,
            source=f"{name} sentence embeddings of each token's text",
        )

    @property
    def d_model(self) -> int:
        return self.unit.shape[1]

    def __contains__(self, token_id: object) -> bool:
        if not isinstance(token_id, int):
            return False
        return bool(self._rows(torch.tensor([token_id]))[0] >= 0)

    # -- set vectors ---------------------------------------------------------------------------
    def _rows(self, token_ids: Int[Tensor, "*shape"]) -> Int[Tensor, "*shape"]:
        """Row of each token id in ``unit``; -1 where the id is unknown."""
        flat = token_ids.reshape(-1).long()
        position = torch.searchsorted(self.token_ids, flat).clamp(max=len(self.token_ids) - 1)
        found = self.token_ids[position] == flat
        return torch.where(found, position, -1).reshape(token_ids.shape)

    def centroids(
        self,
        token_ids: Int[Tensor, "sets k"],
        mask: torch.Tensor | None = None,
    ) -> tuple[Float[Tensor, "sets d"], Int[Tensor, " sets"]]:
        """Mean unit vector of each row's tokens (a multiset), and how many were known.

        ``mask`` (bool, same shape) drops entries, e.g. padding. Unknown ids are dropped too.
        """
        rows = self._rows(token_ids)
        known = rows >= 0
        if mask is not None:
            known &= mask.bool()
        # A sparse [sets, vocab] matrix of token counts times the unit vectors: no [sets, k, d]
        # intermediate, so every neuron of a large model is one cheap product.
        set_index = torch.arange(rows.shape[0])[:, None].expand_as(rows)
        counts = torch.sparse_coo_tensor(
            torch.stack([set_index[known], rows[known]]),
            torch.ones(int(known.sum())),
            (rows.shape[0], len(self.token_ids)),
            check_invariants=True,
        )
        total = torch.sparse.mm(counts, self.unit)
        n_known = known.sum(-1)
        return total / n_known.clamp(min=1)[:, None].float(), n_known

    def similarity_many(
        self,
        a: Int[Tensor, "sets k"],
        b: Int[Tensor, "sets m"] | Int[Tensor, " m"],
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> Float[Tensor, " sets"]:
        """Similarity of each row of ``a`` with the matching row of ``b`` (or with one set ``b``).

        NaN where either set has no known token.
        """
        if a.ndim != 2:
            raise NeuroplasticError(f"expected token ids [sets, k], got shape {tuple(a.shape)}")
        centroid_a, known_a = self.centroids(a, mask_a)
        if b.ndim == 1:
            b = b[None, :]
            mask_b = None if mask_b is None else mask_b[None, :]
        centroid_b, known_b = self.centroids(b, mask_b)
        cosine = torch.nn.functional.cosine_similarity(
            centroid_a, centroid_b.expand_as(centroid_a), dim=-1, eps=1e-12
        )
        valid = (known_a > 0) & (known_b > 0).expand_as(known_a)
        return torch.where(valid, cosine, torch.full_like(cosine, float("nan")))

    def similarity(self, a: Sequence[int], b: Sequence[int]) -> float:
        """Concept similarity of two token-id lists (multisets); NaN if either has no known id."""
        if len(a) == 0 or len(b) == 0:
            return float("nan")
        return float(self.similarity_many(torch.tensor([list(a)]), torch.tensor(list(b)))[0])


def _unique_first(token_ids: Int[Tensor, " n"]) -> tuple[Int[Tensor, " u"], Int[Tensor, " u"]]:
    """Sorted unique ids and the index of each one's first occurrence."""
    ids, inverse = torch.unique(token_ids, sorted=True, return_inverse=True)
    positions = torch.arange(len(token_ids))
    first = torch.full((len(ids),), len(token_ids), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return ids, first


def _sentence_vectors(texts: list[str], model_path: str, batch_size: int) -> Float[Tensor, "n d"]:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return _mean_pooled_vectors(texts, model_path, batch_size)
    model = SentenceTransformer(model_path, device="cpu")
    return (
        model.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        .float()
        .cpu()
    )


def _mean_pooled_vectors(texts: list[str], model_path: str, batch_size: int) -> Tensor:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1))
    return torch.cat(out)
