"""Which surviving neurons take the forget facts over while an arm relearns them?

Followed for a neuron removal (``removal=neurons``) only: an eraser or a weight edit holds no
neurons, so it leaves no fixed population of survivors to follow, and those studies skip this.

For each protocol's main retrainer (tag ``""``), in the removal arm and in its control, the
statistics at the recall positions of the forget and retain facts are collected again on the
retrained model, the arm's neurons still held, and ranked by the study's method, as the removal
was chosen (:func:`recall_ranking`). The population is the arm's survivors: every neuron the arm
does not hold, alive at both ends, the same neurons before and after. A gainer is a survivor
whose saliency, re-ranked among that population, rose most from the start (the base weights with
the arm's neurons held: the state ``removal`` or ``control``, the main study's ``pruned`` stage)
to the end (``{protocol}/{arm}``): the main study's gain
(:func:`~neuroplastic.analysis.predict_truth.ground_truth`, the measure
:func:`~neuroplastic.analysis.reappearance.reappearance` lists), so its numbers read the same.
Beside it, each gainer's saliency in the ranking the removal was chosen by (base weights, nothing
held), and how concentrated the gain is: the share of the population's positive saliency gain
that its top 1% of gainers carry (the main study's ``gain`` truth), the removal arm's against
its control's.

``seed-S/gainers-<protocol>.json`` holds both arms of one protocol; each arm's entry is computed
in the block that retrains its state, from exactly that retrained model, and written (atomically)
before the state's scores, so a state in ``scores.jsonl`` has its gainers unless it was measured
before they were followed: its retrained weights are gone then, and it is not retrained for
them (:meth:`Gainers.note_resumed` says so). The entry also carries the views' activations
(:data:`VIEW_NEURONS` top gainers on a few facts' prompts, before and after), since drawing them
needs the retrained model and the page is written from files.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from neuroplastic.analysis.predict_truth import GroundTruth, ground_truth
from neuroplastic.core.activations import neuron_activations
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.facts import EVAL_TEMPLATES, FORGET, RETAIN, render_fact
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.facts_config import FactsConfig
from neuroplastic.io import atomic_write_json

#: Gainers listed per arm.
TOP_GAINERS = 20
#: The share of the population whose part of the positive gain measures its concentration: the
#: main study's top 1% (its ``gain`` truth).
CONCENTRATION_TOP = 0.01
#: Top gainers drawn in the views, and the facts whose prompts they are drawn on: the first
#: forget-V facts and a couple of retain facts.
VIEW_NEURONS = 5
VIEW_V = 4
VIEW_RETAIN = 2
#: The arms followed: those that hold neurons.
HELD_ARMS = ("removal", "control")

#: A removal: given the model, a context manager that holds it.
Hold = Callable[[Any], contextlib.AbstractContextManager]


def recall_ranking(model: Any, recall: ConceptDataset, method: str) -> Ranking:
    """The neurons ranked for the forget facts against the retain facts at their recall
    positions, by ``method``: how the removal is chosen, and how every gainer is measured."""
    model.eval()
    stats = collect_stats(model, recall, batch_size=32, progress=False)
    return Ranking.from_stats(stats, FORGET, method)  # the stats go: only the scores are kept


def gainers_path(directory: Path, protocol: str) -> Path:
    return Path(directory) / f"gainers-{protocol}.json"


def read_gainers(path: Path) -> dict[str, Any]:
    """A gainers file (empty when there is none)."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise NeuroplasticError(
            f"{path} is not readable JSON ({error}); delete it to go on (its arms' gainers are "
            "then not recomputed unless their states are removed from scores.jsonl too)"
        ) from error


# --------------------------------------------------------------------------------------------
# The measure


def gain_concentration(truth: GroundTruth) -> dict[str, float | int | None]:
    """The share of the survivors' positive saliency gain that their top gainers carry (the
    ``gain`` truth's top share, ties with the last one in counted in). Re-ranked saliency sums
    to the same total at both ends, so the gains cancel: the positive part is what moved up,
    and a removal whose concept went to a few neurons gives a larger share than one whose
    retraining moved many a little. None when nothing moved up."""
    gain = truth.gain.nan_to_num(0.0).clamp(min=0.0)
    total = float(gain.sum())
    chosen = truth.positives["gain"]
    return {
        "top": truth.top,
        "n_top": int(chosen.sum()),
        "gain_share_top": float(gain[chosen].sum()) / total if total > 0 else None,
    }


def survivor_gainers(
    start: Ranking, end: Ranking, held: NeuronSet, base: Ranking, n: int = TOP_GAINERS
) -> dict[str, Any]:
    """The ``n`` survivors of ``held`` whose saliency rose most from ``start`` to ``end``,
    re-ranked among those alive at both (ties in index order, as
    :func:`~neuroplastic.analysis.reappearance.reappearance` orders them), as a JSON record:
    the population's size, the concentration of its gain, and per gainer its saliency in
    ``base`` (the removal's own ranking, every live neuron), its raw scores, re-ranked saliency
    and rank (1 = most salient of the population) at both ends, and its gain."""
    truth = ground_truth(start, end, held, top=CONCENTRATION_TOP)
    population = truth.candidates
    size = int(population.sum())
    before: Float[Tensor, "layer neuron"] = start.saliency_among(population)
    after: Float[Tensor, "layer neuron"] = end.saliency_among(population)
    gain = after - before
    order = torch.argsort(-gain.masked_fill(~population, -math.inf).flatten(), stable=True)
    d_mlp = gain.shape[1]

    def rank(saliency: Tensor, layer: int, neuron: int) -> float:
        # saliency_among is 1 - rank / (n - 1), rank 0-based with ties averaged (so a whole
        # number or a half: rounding takes the float noise of the division back out).
        return round(1 + (1 - float(saliency[layer, neuron])) * max(size - 1, 1), 6)

    rows = []
    for flat in order[: min(n, size)].tolist():
        layer, neuron = divmod(flat, d_mlp)
        rank_start, rank_end = rank(before, layer, neuron), rank(after, layer, neuron)
        rows.append(
            {
                "layer": layer,
                "neuron": neuron,
                "saliency_base": _number(base.saliency[layer, neuron]),
                "score_start": _number(start.scores[layer, neuron]),
                "score_end": _number(end.scores[layer, neuron]),
                "saliency_start": float(before[layer, neuron]),
                "saliency_end": float(after[layer, neuron]),
                "gain": float(gain[layer, neuron]),
                "rank_start": rank_start,
                "rank_end": rank_end,
                "rank_change": rank_start - rank_end,
            }
        )
    return {
        "method": start.method,
        "held": len(held),
        "population": size,
        **gain_concentration(truth),
        "gainers": rows,
    }


def _number(value: Tensor) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# In the study


def view_prompts(
    data: StudyData, dataset: Callable[[Sequence[Any]], ConceptDataset]
) -> tuple[ConceptDataset, list[dict[str, str]]]:
    """The views' prompts: the first :data:`VIEW_V` forget-V facts and :data:`VIEW_RETAIN`
    retain facts, each in the first evaluation template of its relation followed by its answer
    (V is asked in that phrasing, which no retraining sentence uses), and what each one is."""
    chosen = [("forget_v", FORGET, f) for f in data.split.forget_v[:VIEW_V]]
    chosen += [("retain", RETAIN, f) for f in data.split.retain[:VIEW_RETAIN]]
    rendered = [render_fact(f, EVAL_TEMPLATES[f.relation][0], label) for _, label, f in chosen]
    about = [{"group": group, "fact": f.key} for group, _, f in chosen]
    return dataset([r.sentence for r in rendered]), about


def _activations(
    model: Any, prompts: ConceptDataset, neurons: Sequence[tuple[int, int]]
) -> list[list[list[float]]]:
    """Each prompt's ``[pos][neuron]`` activations of ``neurons`` under whatever the model
    holds, rounded: a view colours them, it does not need float32's digits."""
    model.eval()
    found = neuron_activations(model, prompts, neurons, range(len(prompts)))
    return [np.round(found[i].astype(np.float64), 4).tolist() for i in range(len(prompts))]


@dataclass
class Retrained:
    """What one state's retrained model gave, kept until the views' start side is taken."""

    protocol: str
    arm: str
    record: dict[str, Any]
    neurons: list[tuple[int, int]]
    after: list[list[list[float]]]


class Gainers:
    """The gainers of one seed's neuron removal and its control (``seed-S/gainers-*.json``).

    ``data``: the seed's :class:`~neuroplastic.experiment.facts_data.StudyData`; ``held``: the
    neurons each arm holds; ``dataset``: sentences to the study's encoding, for the views'
    prompts (:func:`view_prompts`). The rankings at base and at each arm's start are taken
    once per seed, when the first state that needs them is run, and kept as rankings (one score
    per neuron), never as statistics."""

    def __init__(
        self,
        directory: Path,
        data: StudyData,
        config: FactsConfig,
        held: Mapping[str, NeuronSet],
        dataset: Callable[[Sequence[Any]], ConceptDataset],
        log: Callable[[str], None],
    ) -> None:
        if set(held) != set(HELD_ARMS):
            raise NeuroplasticError(f"gainers follow the arms {HELD_ARMS}; got {sorted(held)}")
        self.directory, self.data, self.config = Path(directory), data, config
        self.held, self.log = dict(held), log
        self.prompts, self.about = view_prompts(data, dataset)
        self._base: Ranking | None = None
        self._start: dict[str, Ranking] = {}

    def followed(self, state: str) -> tuple[str, str] | None:
        """``(protocol, arm)`` of a state whose gainers are followed (a held arm retrained by
        the main retrainer); None for any other state."""
        retraining, _, arm = state.rpartition("/")
        if not retraining or "@" in retraining or arm not in self.held:
            return None
        return retraining, arm

    def has(self, protocol: str, arm: str) -> bool:
        return arm in read_gainers(gainers_path(self.directory, protocol)).get("arms", {})

    def pending(self, state: str) -> bool:
        """True for a followed state whose gainers are not yet written."""
        followed = self.followed(state)
        return followed is not None and not self.has(*followed)

    def note_resumed(self, state: str) -> None:
        """A state already measured: say so when its gainers are missing (its retrained
        weights are gone, and retraining it again for them alone is not done)."""
        if self.pending(state):
            self.log(
                f"seed {self.config.seed} {state}: measured before its gainers were followed; "
                "its retrained model is gone, so none are written for it (a fresh --out has them)"
            )

    def prepare(self, model: Any, arm: str, hold: Hold) -> None:
        """Rank at base (nothing held) and at the arm's start (its neurons held), once each;
        the model holds the base weights."""
        if self._base is None:
            self._base = recall_ranking(model, self.data.recall, self.config.method)
        if arm not in self._start:
            with hold(model):
                self._start[arm] = recall_ranking(model, self.data.recall, self.config.method)

    def retrained(self, model: Any, state: str) -> Retrained:
        """In the state's block (retrained, the arm's neurons held): rank again, find the
        gainers, and take the views' activations after relearning."""
        followed = self.followed(state)
        if followed is None or followed[1] not in self._start or self._base is None:
            raise NeuroplasticError(f"gainers of {state!r}: not followed, or its arm unprepared")
        protocol, arm = followed
        end = recall_ranking(model, self.data.recall, self.config.method)
        record = survivor_gainers(self._start[arm], end, self.held[arm], self._base)
        neurons = [(g["layer"], g["neuron"]) for g in record["gainers"][:VIEW_NEURONS]]
        after = _activations(model, self.prompts, neurons)
        record = {"state": state, "start": arm, **record}
        return Retrained(protocol, arm, record, neurons, after)

    def save(self, model: Any, found: Retrained) -> None:
        """Back at the start (base weights, the arm's neurons held): the views' activations
        before relearning, then the arm's entry, written atomically."""
        before = _activations(model, self.prompts, found.neurons)
        view = {
            "neurons": [list(n) for n in found.neurons],
            "prompts": [
                {**about, "tokens": self.prompts.token_strings(i), "before": b, "after": a}
                for i, (about, b, a) in enumerate(zip(self.about, before, found.after, strict=True))
            ],
        }
        path = gainers_path(self.directory, found.protocol)
        content = read_gainers(path) or {
            "protocol": found.protocol,
            "seed": self.config.seed,
            "method": self.config.method,
            "arms": {},
        }
        content["arms"][found.arm] = {**found.record, "view": view}
        atomic_write_json(path, content)
