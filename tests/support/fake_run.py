"""Hand-made run directories with known answers, for testing analyses and the report.

A tiny "model" of 4 layers x 24 MLP neurons, a vocabulary of 38 tokens in five labels, and 40
sentences. Everything is written with the real ``RunDir`` writers, so the files are exactly what
an experiment leaves behind. Neuron statistics are constructed directly: the concept (``LOC``)
mean activation ``s`` of a neuron is set per stage (every other label's mean is 0, so its
probeless score is ``4 * s``), and its top-k tokens are picked from chosen label groups, each at a
real occurrence in the sentences.

The planted story, concept arm (``hold`` mode unless ``mode="regrow"``):

* ``PLANTED`` = layer 3, neurons 0-5: the concept neurons at ``base`` (top tokens all LOC, by far
  the most salient). They are the ablated set: dead (all activations 0) from ``pruned`` on.
  In ``regrow`` mode they come back: half LOC at ``retrain-1``, their base tokens at ``retrain-2``.
* ``PRIMED`` = layer 1, neurons 0-5: at ``base`` they fire on person names (PER, similar to
  location names in the embeddings) and are the least salient alive neurons; after retraining
  they are the most salient, with half LOC and half PER top tokens (polysemantic).
* ``POLY_BASE`` = layer 2, neurons 10-11: half LOC, half O top tokens at every stage.
* Every other neuron fires on one label group (O, PER, ORG or MISC, cycling) and gains concept
  saliency during retraining in proportion to that group's similarity to LOC.

So: the top-6 neurons are all in layer 3 at ``base`` and all in layer 1 at ``retrain-2``;
polysemantic neurons (LOC share in [0.2, 0.8]) number 2 at ``base`` and ``pruned`` and 8 at
``retrain-1`` and ``retrain-2`` (6 of them new); the correlation of pre-pruning similarity to the
concept with saliency gain is positive. The random arm ablates layer 3, neurons 12-17 (same
per-layer count) and nothing moves: the planted neurons stay on top, in layer 3.

``config.json`` is a real ``ExperimentConfig.to_dict()``; ``metrics.jsonl`` and ``summary.json``
have the experiment's format (``{"arm", "stage", "step", "f1": {...}, "precision": {...},
"recall": {...}, "train_loss"}`` rows; base fine-tuning evaluated at step -10, the stage ends at
0, 0, 20, 40 and inner evaluations ``stage@10``). ``summary.json`` is built from those rows and
the two neuron sets by the experiment's own :func:`~neuroplastic.experiment.summary.arm_summaries`
(gaps, overlap, control kind, recovery), with hand-set ``data`` (mentions seen in training) and
``base`` (fine-tuning length and stopping rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neuroplastic.config import ExperimentConfig
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import NeuronStats
from neuroplastic.experiment.summary import arm_summaries
from neuroplastic.io import atomic_write_json, atomic_write_text
from neuroplastic.store.rundir import RunDir, top_tokens_frame
from neuroplastic.store.summary import Steps, Summary

LABELS = ("O", "LOC", "PER", "ORG", "MISC")
CONCEPT = "LOC"
N_LAYERS, D_MLP, TOP_K, D_MODEL = 4, 24, 6, 16
STAGES = ("base", "pruned", "retrain-1", "retrain-2")

WORDS: dict[str, tuple[str, ...]] = {
    "LOC": (" Paris", " London", " Berlin", " Rome", " Madrid", " Tokyo", " Cairo", " Lima"),
    "PER": (" Alice", " Bob", " Carol", " Dave", " Erin", " Frank"),
    "ORG": (" Google", " Siemens", " Fiat", " Sony"),
    "MISC": (" French", " German", " Olympics", " English"),
    "O": (
        " the",
        " of",
        " and",
        " in",
        " said",
        " a",
        " to",
        " on",
        " was",
        " for",
        " by",
        " with",
        " <b>&amp;",
    ),
}
BOS = "<|endoftext|>"
# Each label group's direction shares a "name" component with LOC in proportion to how close
# the group is to location names; O words share none (and point slightly away).
NAME_WEIGHT = {"LOC": 2.0, "PER": 1.4, "ORG": 0.8, "MISC": 0.3, "O": -0.5}
# Concept-saliency gain (in LOC mean activation) of a background neuron by retrain-2.
GAIN = {"PER": 0.30, "ORG": 0.18, "MISC": 0.08, "O": 0.0}
BACKGROUND = ("O", "PER", "ORG", "MISC")

PLANTED = [(3, n) for n in range(6)]
PRIMED = [(1, n) for n in range(6)]
POLY_BASE = [(2, 10), (2, 11)]
RANDOM_ABLATED = [(3, n) for n in range(12, 18)]


class FakeTokenizer:
    """Just enough tokenizer for ``top_tokens_frame``: ``decode([id])``."""

    def __init__(self, vocabulary: list[str]) -> None:
        self.vocabulary = vocabulary

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocabulary[i] for i in ids)


@dataclass
class FakeRun:
    path: Path
    mode: str
    vocabulary: list[str]
    token_label: list[str]
    #: token ids of each label group
    groups: dict[str, list[int]]
    sentences: list[list[int]]
    config: dict = field(default_factory=dict)

    @property
    def run(self) -> RunDir:
        return RunDir(self.path)


def _vocabulary() -> tuple[list[str], list[str], dict[str, list[int]]]:
    vocabulary, labels, groups = [BOS], ["-"], {}
    for label in ("LOC", "PER", "ORG", "MISC", "O"):
        groups[label] = []
        for word in WORDS[label]:
            groups[label].append(len(vocabulary))
            vocabulary.append(word)
            labels.append(label)
    return vocabulary, labels, groups


def _embeddings(labels: list[str], rng: np.random.Generator) -> torch.Tensor:
    basis = np.eye(D_MODEL)
    direction = {"LOC": 1, "PER": 2, "ORG": 3, "MISC": 4, "O": 5}
    rows = []
    for label in labels:
        if label == "-":
            rows.append(rng.normal(0, 1, D_MODEL))
            continue
        vector = NAME_WEIGHT[label] * basis[0] + basis[direction[label]]
        rows.append(vector + rng.normal(0, 0.15, D_MODEL))
    return torch.tensor(np.array(rows), dtype=torch.float32)


def _sentences(groups: dict[str, list[int]], rng: np.random.Generator) -> list[list[int]]:
    """40 sentences: BOS, then 8-12 words; every word occurs several times."""
    every = [t for ids in groups.values() for t in ids]
    sentences = []
    for index in range(40):
        length = int(rng.integers(8, 13))
        words = [every[(index * 7 + j) % len(every)] for j in range(3)]
        words += [int(t) for t in rng.choice(every, size=length - 3)]
        rng.shuffle(words)
        sentences.append([0, *words])
    return sentences


class _Planter:
    """Builds one stage's NeuronStats from per-neuron LOC means and top-token groups."""

    def __init__(self, fake: FakeRun) -> None:
        self.fake = fake
        self.occurrences: dict[int, list[tuple[int, int]]] = {}
        for s, sentence in enumerate(fake.sentences):
            for p, token in enumerate(sentence):
                if p:
                    self.occurrences.setdefault(token, []).append((s, p))
        counts = [
            sum(fake.token_label[t] == label for sentence in fake.sentences for t in sentence[1:])
            for label in LABELS
        ]
        self.count = torch.tensor(counts, dtype=torch.long)

    def stats(
        self, loc_mean: torch.Tensor, top_ids: list[list[list[int]]], dead: torch.Tensor
    ) -> NeuronStats:
        n_labels = len(LABELS)
        means = torch.zeros(n_labels, N_LAYERS, D_MLP, dtype=torch.float64)
        means[LABELS.index(CONCEPT)] = loc_mean.double()
        means[:, dead] = 0
        variance = torch.where(dead, 0.0, 0.1).double().expand_as(means)
        count = self.count.double()[:, None, None]
        shape = (N_LAYERS, D_MLP, TOP_K)
        values = torch.zeros(shape)
        sentence = torch.zeros(shape, dtype=torch.long)
        position = torch.zeros(shape, dtype=torch.long)
        token = torch.zeros(shape, dtype=torch.long)
        label = torch.zeros(shape, dtype=torch.long)
        for layer in range(N_LAYERS):
            for neuron in range(D_MLP):
                ids = top_ids[layer][neuron]
                used: dict[int, int] = {}
                for k, token_id in enumerate(ids):
                    nth = used.get(token_id, 0)
                    used[token_id] = nth + 1
                    places = self.occurrences[token_id]
                    s, p = places[(layer * 5 + neuron + nth) % len(places)]
                    sentence[layer, neuron, k], position[layer, neuron, k] = s, p
                    token[layer, neuron, k] = token_id
                    label[layer, neuron, k] = LABELS.index(self.fake.token_label[token_id])
                    if not dead[layer, neuron]:
                        values[layer, neuron, k] = 3.0 + float(loc_mean[layer, neuron]) - 0.3 * k
        return NeuronStats(
            LABELS,
            self.count.clone(),
            means * count,
            (means**2 + variance) * count,
            values,
            sentence,
            position,
            token,
            label,
        )


def _pick(groups: dict[str, list[int]], spec: list[tuple[str, int]], offset: int) -> list[int]:
    """``[("LOC", 3), ("PER", 3)]`` -> 3 LOC then 3 PER token ids, rotated by ``offset``."""
    ids = []
    for label, n in spec:
        pool = groups[label]
        ids += [pool[(offset + i) % len(pool)] for i in range(n)]
    return ids


def _arm_stages(
    fake: FakeRun, arm: str, rng: np.random.Generator
) -> dict[str, tuple[torch.Tensor, list[list[list[int]]], torch.Tensor]]:
    """(LOC mean, top token ids, dead mask) of every stage of one arm."""
    groups = fake.groups
    base_mean = torch.tensor(rng.uniform(0.05, 0.3, (N_LAYERS, D_MLP)), dtype=torch.float32)
    drift = torch.tensor(rng.normal(0, 0.03, (N_LAYERS, D_MLP)), dtype=torch.float32)
    background = [
        [BACKGROUND[(layer * D_MLP + n) % 4] for n in range(D_MLP)] for layer in range(N_LAYERS)
    ]
    ablated = PLANTED if arm == "concept" else RANDOM_ABLATED
    stages = {}
    for index, stage in enumerate(STAGES):
        progress = {"base": 0.0, "pruned": 0.0, "retrain-1": 0.5, "retrain-2": 1.0}[stage]
        mean = base_mean.clone()
        tops = [
            [_pick(groups, [(background[layer][n], TOP_K)], n) for n in range(D_MLP)]
            for layer in range(N_LAYERS)
        ]
        # Retraining drifts every neuron a little, in both arms.
        mean += progress * drift
        if arm == "concept":
            for layer in range(N_LAYERS):
                for n in range(D_MLP):
                    mean[layer, n] += progress * GAIN[background[layer][n]]
        for n, (layer, neuron) in enumerate(PLANTED):
            mean[layer, neuron] = 2.0 + 0.01 * n
            tops[layer][neuron] = _pick(groups, [("LOC", TOP_K)], n)
        for n, (layer, neuron) in enumerate(PRIMED):
            tops[layer][neuron] = _pick(groups, [("PER", TOP_K)], n)
            mean[layer, neuron] = 0.01 + 0.001 * n
            if arm == "concept" and stage == "retrain-1":
                mean[layer, neuron] = 1.0 + 0.01 * n
                tops[layer][neuron] = _pick(groups, [("LOC", 2), ("PER", 4)], n)
            if arm == "concept" and stage == "retrain-2":
                mean[layer, neuron] = 3.0 + 0.01 * n
                tops[layer][neuron] = _pick(groups, [("LOC", 3), ("PER", 3)], n)
        for n, (layer, neuron) in enumerate(POLY_BASE):
            mean[layer, neuron] = 0.3 + 0.001 * n
            tops[layer][neuron] = _pick(groups, [("LOC", 3), ("O", 3)], n)
        dead = torch.zeros(N_LAYERS, D_MLP, dtype=torch.bool)
        if index >= 1:
            for n, (layer, neuron) in enumerate(ablated):
                regrown = fake.mode == "regrow" and arm == "concept" and stage != "pruned"
                if regrown and stage == "retrain-1":
                    mean[layer, neuron] = 0.5
                    tops[layer][neuron] = _pick(groups, [("LOC", 3)], n) + _pick(
                        groups, [("O", 3)], n
                    )
                elif regrown:
                    mean[layer, neuron] = 1.0
                    tops[layer][neuron] = _pick(groups, [("LOC", TOP_K)], n)
                else:
                    dead[layer, neuron] = True
                    # A dead neuron's "top" tokens are arbitrary ties at 0.
                    tops[layer][neuron] = _pick(groups, [("O", TOP_K)], n)
        stages[stage] = (mean, tops, dead)
    return stages


#: LOC F1 at every evaluation (step -> value): base fine-tuning at negative steps, pruning at 0.
#: The base evaluations are shared by both arms, as in the experiment.
BASE_LOC = {-10: 0.7, 0: 0.95}
ARM_LOC = {
    "concept": {0: 0.05, 10: 0.55, 20: 0.8, 30: 0.88, 40: 0.91},
    "random": {0: 0.93, 10: 0.94, 20: 0.95, 30: 0.96, 40: 0.97},
}
#: (stage, step, name) of every evaluation, as ``experiment._finish_stage`` (stage ends) and
#: ``experiment._periodic_eval`` (``stage@n``, every ``eval_every`` steps inside a stage) name them.
EVALUATIONS = [
    ("base", -10, "base@10"),
    ("base", 0, "base"),
    ("pruned", 0, "pruned"),
    ("retrain-1", 10, "retrain-1@10"),
    ("retrain-1", 20, "retrain-1"),
    ("retrain-2", 30, "retrain-2@10"),
    ("retrain-2", 40, "retrain-2"),
]
SEEN_IN_TRAIN = {
    "validation_seen_in_train": {
        "LOC": {"mentions": 120, "seen": 30, "share": 0.25},
        "PER": {"mentions": 80, "seen": 0, "share": 0.0},
        "ORG": {"mentions": 40, "seen": 4, "share": 0.1},
        "MISC": {"mentions": 50, "seen": 10, "share": 0.2},
    },
    "probe_seen_in_train": {
        "LOC": {"mentions": 110, "seen": 11, "share": 0.1},
        "PER": {"mentions": 70, "seen": 7, "share": 0.1},
        "ORG": {"mentions": 30, "seen": 0, "share": 0.0},
        "MISC": {"mentions": 45, "seen": 9, "share": 0.2},
    },
}
BASE_TRAINING = {"steps": 20, "stopped": "plateau"}


def _scores(loc: float) -> dict[str, float]:
    return {
        "overall": round((loc + 0.9 * 3) / 4, 4),
        "LOC": loc,
        "PER": 0.92,
        "ORG": 0.88,
        "MISC": 0.86,
    }


def _metrics(arm: str) -> list[dict]:
    """Evaluation rows of one arm in the experiment's format: the concept arm collapses on LOC
    when pruned and recovers; the random arm barely moves."""
    rows = []
    for stage, step, name in EVALUATIONS:
        loc = BASE_LOC[step] if stage == "base" else ARM_LOC[arm][step]
        f1 = _scores(loc)
        rows.append(
            {
                "arm": arm,
                "stage": name,
                "step": step,
                "f1": f1,
                "precision": dict(f1),
                "recall": dict(f1),
                "train_loss": None if stage == "pruned" else round(1.0 - f1["overall"], 4),
            }
        )
    return rows


def make_fake_run(path: str | Path, mode: str = "hold", seed: int = 0) -> FakeRun:
    """Write a complete run directory with the planted story above; returns its description."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    vocabulary, token_label, groups = _vocabulary()
    fake = FakeRun(path, mode, vocabulary, token_label, groups, [])
    fake.sentences = _sentences(groups, rng)
    config = ExperimentConfig(
        model="fake-4x24",
        dataset="hand-made",
        concept=CONCEPT,
        method="probeless",
        mode=mode,
        seed=seed,
        base_steps=BASE_TRAINING["steps"],
        stages=len(STAGES) - 2,
        stage_steps=20,
        eval_every=10,
        top_k_tokens=TOP_K,
    )
    fake.config = config.to_dict()
    run = RunDir(path)
    atomic_write_json(run.config_path, fake.config)
    run.write_sentences([[vocabulary[t] for t in sentence] for sentence in fake.sentences])
    token_ids = torch.tensor(sorted({t for sentence in fake.sentences for t in sentence}))
    embeddings = _embeddings(token_label, rng)
    run.write_token_embeddings(token_ids, embeddings[token_ids])
    planter = _Planter(fake)
    tokenizer = FakeTokenizer(vocabulary)
    neuron_sets = {}
    for arm in ("concept", "random"):
        ablated = PLANTED if arm == "concept" else RANDOM_ABLATED
        neurons = NeuronSet.of(N_LAYERS, D_MLP, ablated, f"{arm} neurons")
        neurons.save(run.neurons_path(arm))
        neuron_sets[arm] = neurons
        for stage, (mean, tops, dead) in _arm_stages(
            fake, arm, np.random.default_rng(seed + 1)
        ).items():
            stats = planter.stats(mean, tops, dead)
            ranking = Ranking.from_stats(stats, CONCEPT, "probeless")
            run.write_stage(arm, stage, ranking, stats, top_tokens_frame(stats, tokenizer))
    rows = [row for arm in neuron_sets for row in _metrics(arm)]
    atomic_write_text(run.metrics_path, "".join(json.dumps(row) + "\n" for row in rows))
    summary = Summary(  # the experiment's own builder, from the same rows and sets
        config=fake.config,
        data=SEEN_IN_TRAIN,
        steps=Steps(base_cap=BASE_TRAINING["steps"], per_stage=config.stage_steps),
        base=BASE_TRAINING,
        arms=arm_summaries(config, rows, neuron_sets),
    )
    atomic_write_json(run.summary_path, summary.to_dict())
    return fake
