"""Sets of MLP neurons, chosen from a ranking or at random, with a JSON round-trip."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool
from torch import Tensor

from neuroplastic.core.ranking import Ranking
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_json


@dataclass(frozen=True)
class NeuronSet:
    """Neurons as sorted ``(layer, neuron)`` pairs in a model of ``n_layers x d_mlp``."""

    n_layers: int
    d_mlp: int
    neurons: tuple[tuple[int, int], ...]
    description: str = ""

    def __post_init__(self) -> None:
        cleaned = tuple(sorted({(int(layer), int(n)) for layer, n in self.neurons}))
        for layer, neuron in cleaned:
            if not (0 <= layer < self.n_layers and 0 <= neuron < self.d_mlp):
                raise NeuroplasticError(
                    f"neuron {layer}:{neuron} is out of range: the model has layers "
                    f"0..{self.n_layers - 1} and neurons 0..{self.d_mlp - 1} per layer"
                )
        object.__setattr__(self, "neurons", cleaned)

    @classmethod
    def of(
        cls, n_layers: int, d_mlp: int, neurons: Iterable[tuple[int, int]], description: str = ""
    ) -> NeuronSet:
        return cls(n_layers, d_mlp, tuple(neurons), description)

    @classmethod
    def parse(cls, text: str, n_layers: int, d_mlp: int) -> NeuronSet:
        """``"3:17,5:2"`` -> neurons 17 of layer 3 and 2 of layer 5."""
        pairs = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            layer, sep, neuron = item.partition(":")
            if not sep or not _is_number(layer) or not _is_number(neuron):
                raise NeuroplasticError(
                    f"cannot read neuron {item!r}: write LAYER:NEURON, e.g. 3:17,5:2"
                )
            pairs.append((int(layer), int(neuron)))
        if not pairs:
            raise NeuroplasticError("no neurons given: write LAYER:NEURON[,LAYER:NEURON...]")
        return cls(n_layers, d_mlp, tuple(pairs), f"neurons {text}")

    @classmethod
    def top_k(cls, ranking: Ranking, k: int) -> NeuronSet:
        """The ``k`` most salient live neurons (neurons that never fired are never chosen)."""
        _check_count(k, ranking.n_alive, "live ")
        return cls(
            ranking.n_layers,
            ranking.d_mlp,
            tuple(ranking.top(k)),
            f"top {k} {ranking.concept} neurons by {ranking.method}",
        )

    @classmethod
    def top_fraction(cls, ranking: Ranking, fraction: float) -> NeuronSet:
        if not 0 < fraction <= 1:
            raise NeuroplasticError(f"fraction must be in (0, 1], got {fraction}")
        k = max(1, round(fraction * ranking.scores.numel()))
        chosen = cls.top_k(ranking, k)
        return cls(
            chosen.n_layers,
            chosen.d_mlp,
            chosen.neurons,
            f"top {fraction:.1%} ({k}) {ranking.concept} neurons by {ranking.method}",
        )

    @classmethod
    def per_layer_top_k(cls, ranking: Ranking, k: int) -> NeuronSet:
        """The ``k`` most salient live neurons of every layer."""
        _check_count(k, int(ranking.alive.sum(1).min()), "live ", " in every layer")
        top = torch.argsort(-ranking.scores, dim=1, stable=True)[:, :k]  # dead score -inf: last
        pairs = [(layer, int(n)) for layer in range(ranking.n_layers) for n in top[layer]]
        return cls(
            ranking.n_layers,
            ranking.d_mlp,
            tuple(pairs),
            f"top {k} {ranking.concept} neurons per layer by {ranking.method}",
        )

    def random_matching(self, seed: int = 0) -> NeuronSet:
        """Random neurons outside this set with the same count in every layer: the control for
        this set, differing from it in which neurons are held and in nothing else."""
        rng = random.Random(seed)
        chosen = self.by_layer()
        pairs = []
        for layer, count in sorted(self.per_layer_counts().items()):
            outside = sorted(set(range(self.d_mlp)) - set(chosen[layer]))
            if len(outside) < count:
                raise NeuroplasticError(
                    f"layer {layer} has {count} of its {self.d_mlp} neurons in the set and only "
                    f"{len(outside)} outside it: a random control matching per-layer counts would "
                    "have to overlap the set. Use --baseline random-global (matches the total "
                    "only) or hold fewer neurons"
                )
            pairs.extend((layer, n) for n in rng.sample(outside, count))
        return NeuronSet(
            self.n_layers,
            self.d_mlp,
            tuple(pairs),
            f"random neurons outside the set matching its per-layer counts (seed {seed})",
        )

    def random_global(self, seed: int = 0) -> NeuronSet:
        """As many random neurons as this set, drawn from all layers outside it (matches the
        total only: for sets too dense in some layer to match per layer)."""
        outside = list(self.complement().neurons)
        if len(outside) < len(self):
            raise NeuroplasticError(
                f"the set holds {len(self)} of {self.n_layers * self.d_mlp} neurons: too few are "
                "left outside it for a random control of the same size; hold at most half"
            )
        pairs = random.Random(seed).sample(outside, len(self))
        return NeuronSet(
            self.n_layers,
            self.d_mlp,
            tuple(pairs),
            f"random neurons outside the set matching its total count (seed {seed})",
        )

    def random_any(self, seed: int = 0) -> NeuronSet:
        """As many random neurons as this set, drawn uniformly from all neurons of the model,
        this set's included: a control that is a random draw at any size (at half of all
        neurons, the pool outside the set is only the complement). Its overlap with this set
        is part of the control: record it (:meth:`overlap`)."""
        every = [(layer, n) for layer in range(self.n_layers) for n in range(self.d_mlp)]
        pairs = random.Random(seed).sample(every, len(self))
        return NeuronSet(
            self.n_layers,
            self.d_mlp,
            tuple(pairs),
            f"random neurons from all neurons, the set's included, as many as it holds "
            f"(seed {seed})",
        )

    def complement(self) -> NeuronSet:
        """Every neuron of the model outside this set."""
        held = set(self.neurons)
        return NeuronSet(
            self.n_layers,
            self.d_mlp,
            tuple(
                (layer, n)
                for layer in range(self.n_layers)
                for n in range(self.d_mlp)
                if (layer, n) not in held
            ),
            "every neuron outside the set",
        )

    def overlap(self, other: NeuronSet) -> int:
        """How many neurons the two sets share."""
        return len(set(self.neurons) & set(other.neurons))

    def __len__(self) -> int:
        return len(self.neurons)

    def __contains__(self, item: object) -> bool:
        return item in set(self.neurons)

    def per_layer_counts(self) -> dict[int, int]:
        return dict(Counter(layer for layer, _ in self.neurons))

    def by_layer(self) -> dict[int, list[int]]:
        grouped: dict[int, list[int]] = {}
        for layer, neuron in self.neurons:
            grouped.setdefault(layer, []).append(neuron)
        return grouped

    def mask(self) -> Bool[Tensor, "layer neuron"]:
        """True where a neuron is in the set."""
        mask = torch.zeros(self.n_layers, self.d_mlp, dtype=torch.bool)
        for layer, neuron in self.neurons:
            mask[layer, neuron] = True
        return mask

    def to_dict(self) -> dict:
        return {
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "description": self.description,
            "neurons": [list(pair) for pair in self.neurons],
        }

    @classmethod
    def from_dict(cls, data: dict) -> NeuronSet:
        try:
            return cls(
                int(data["n_layers"]),
                int(data["d_mlp"]),
                tuple((int(a), int(b)) for a, b in data["neurons"]),
                str(data.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise NeuroplasticError(
                f"not a neuron set: expected n_layers, d_mlp and neurons [[layer, neuron], ...] "
                f"({error})"
            ) from error

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> NeuronSet:
        path = Path(path)
        if not path.is_file():
            raise NeuroplasticError(f"neuron set file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise NeuroplasticError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(data)


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²" and "３", which int() refuses."""
    text = text.strip()
    return text.isascii() and text.isdigit()


def _check_count(k: int, available: int, kind: str = "", where: str = "") -> None:
    if not 0 < k <= available:
        raise NeuroplasticError(
            f"cannot choose {k} neurons: there are {available} {kind}neurons{where}; choose "
            f"between 1 and {available}"
        )


#: what a run's control arm is, by how it was drawn (summary.json ``arms.random.control``)
CONTROL_KINDS = {
    "random": "random neurons outside the concept set",
    "complement": "the concept set's complement: the pool outside the set was no larger than "
    "the set, so the draw had no choice and is the same for every seed",
    "random-any": "random neurons drawn from all neurons, the concept's included",
}


def control_kind(baseline: str, control: NeuronSet, concept: NeuronSet) -> str:
    """``random``, ``complement`` (a draw from outside ``concept`` that had to take its whole
    pool: every neuron outside the set, or per layer every neuron outside it in each layer it
    matched) or ``random-any`` (``--baseline random-any``)."""
    if baseline == "random-any":
        return "random-any"
    if baseline == "random":
        held, drawn = concept.per_layer_counts(), control.per_layer_counts()
        forced = all(concept.d_mlp - held.get(layer, 0) == count for layer, count in drawn.items())
    else:
        forced = len(control) == concept.n_layers * concept.d_mlp - len(concept)
    return "complement" if forced and len(control) and not control.overlap(concept) else "random"
