"""Two disjoint halves of the probe sentences: one the predictors read, one the truths read.

A predictor read from the same sentences as the ground truth it is scored against shares that
truth's sampling noise: ``saliency_pruned`` and a gain measured from the pruned stage would
agree (or disagree) by the noise of one set of statistics even where nothing moved. So every
stage takes its statistics on each half apart (the stage's own statistics are the two merged,
as one pass over all the sentences would give), the predictors read only the ``predict`` half
and every ground truth only the ``truth`` half.

The split is a seeded hash of each sentence's index, so it is the same on every resumption
and for every arm of a run, and changes with the seed like everything else that is sampled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from jaxtyping import Bool
from torch import Tensor

from neuroplastic.core.stats import NeuronStats
from neuroplastic.errors import NeuroplasticError

HALVES = ("predict", "truth")
#: the file of a stage holding each half's moments (no top tokens: those live in the stage's
#: statistics, with the sentence each came from, so a half's share of them can be picked out)
HALVES_FILE = "halves.safetensors"


@dataclass(frozen=True)
class ProbeSplit:
    """Sentence indices of the two halves, each in increasing order."""

    predict: tuple[int, ...]
    truth: tuple[int, ...]

    @property
    def sizes(self) -> dict[str, int]:
        return {"predict": len(self.predict), "truth": len(self.truth)}

    def in_predict(self, sentences: Tensor) -> Bool[Tensor, "..."]:
        """Whether each sentence index in ``sentences`` belongs to the predict half."""
        return torch.isin(sentences, torch.tensor(self.predict, dtype=sentences.dtype))


def _bit(seed: int, index: int, salt: str = "") -> int:
    key = f"{seed}:{index}" if not salt else f"{salt}:{seed}:{index}"
    return hashlib.blake2b(key.encode(), digest_size=1).digest()[0] & 1


def split_probe(n_sentences: int, seed: int, salt: str = "") -> ProbeSplit:
    """Each of ``n_sentences`` sentences to one half by a hash of ``(seed, index)`` (and
    ``salt``, for a split of other sentences that should not repeat this one's coins).

    The halves are near equal in size, not exactly (a coin per sentence). Both must hold at
    least one sentence: fewer than 4 sentences cannot be split usefully."""
    if n_sentences < 4:
        what, option = (
            ("probe sentences", "--probe-sentences")
            if not salt
            else ("validation sentences", "--validation-sentences")
        )
        why = "(predictors / ground truths)" if not salt else "(probe fit / probe score)"
        raise NeuroplasticError(
            f"the {what} are split in two halves {why}; {n_sentences} sentences are too few: "
            f"give {option} 4 or more"
        )
    bits = [_bit(seed, i, salt) for i in range(n_sentences)]
    predict = tuple(i for i, b in enumerate(bits) if b == 0)
    truth = tuple(i for i, b in enumerate(bits) if b == 1)
    if not predict or not truth:  # 2^-n: a few sentences, an unlucky seed
        predict, truth = tuple(range(0, n_sentences, 2)), tuple(range(1, n_sentences, 2))
    return ProbeSplit(predict, truth)


def save_halves(path: str | Path, halves: dict[str, NeuronStats]) -> None:
    """Both halves' moments in one file (tensors prefixed ``predict.`` and ``truth.``)."""
    from safetensors.torch import save

    from neuroplastic.io import atomic_write_bytes

    tensors, names = {}, None
    for half in HALVES:
        stats = halves[half]
        names = stats.label_names
        for field in ("count", "sum", "sum_sq"):
            tensors[f"{half}.{field}"] = getattr(stats, field).contiguous()
    atomic_write_bytes(path, save(tensors, metadata={"label_names": ",".join(names or ())}))


def load_halves(path: str | Path) -> dict[str, NeuronStats]:
    """:func:`save_halves`'s file back, as two :class:`NeuronStats` without top tokens."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        label_names = tuple(handle.metadata()["label_names"].split(","))
    tensors = load_file(str(path))
    halves = {}
    for half in HALVES:
        sums = tensors[f"{half}.sum"]
        n_layers, d_mlp = sums.shape[1], sums.shape[2]
        empty = NeuronStats.empty(label_names, n_layers, d_mlp, 0)
        halves[half] = replace(
            empty, count=tensors[f"{half}.count"], sum=sums, sum_sq=tensors[f"{half}.sum_sq"]
        )
    return halves
