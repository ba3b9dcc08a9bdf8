"""The arms' names: one constant per arm, which every module that names an arm uses (the run
directory's files, summary.json, the report's colours and tables). Which arms a run has is
:attr:`neuroplastic.config.ExperimentConfig.arms`."""

from __future__ import annotations

#: The arm that holds the concept's neurons (ablated, then retrained): what a run measures. Its
#: base stage is the base of every arm but the naive one (whose base never learned the concept).
CONCEPT_ARM = "concept"
#: The concept arm's control (``baseline``): as many other neurons, held and retrained alike.
RANDOM_ARM = "random"
#: The arm a chase adds: the union of every round's neurons held from the base weights at once,
#: retrained for one round (is chasing different from removing more at once?).
ONE_SHOT_ARM = "one-shot"
#: The arm ``--naive`` adds: a base fine-tuned identically but with the concept's tokens out of
#: the loss (it never learns the concept), then holding the concept arm's neurons and retrained
#: on the concept arm's batches, labels included: the concept learned from nothing, for savings.
NAIVE_ARM = "naive"
#: The arm ``--preempt`` adds: the concept's neurons plus the ``--preempt-count`` survivors the
#: predictor scores highest at the pruned stage (the oracle's with ``--preempt oracle``;
#: :mod:`neuroplastic.experiment.preempt`). This is the arm's name; the setting ``preempt``
#: (spelled alike) names the predictor.
PREEMPT_ARM = "preempt"
#: The preempt arm's control: the concept's neurons plus as many random survivors, as many per
#: layer, from the same candidates.
PREEMPT_RANDOM_ARM = "preempt-random"
#: The oracle: the concept's neurons plus the survivors that gained the most saliency in the
#: concept arm (hindsight), which bounds what any predictor could buy; ``--preempt oracle`` runs
#: no such arm (its preempt arm is the oracle).
PREEMPT_ORACLE_ARM = "preempt-oracle"
#: The arms ``--preempt`` adds, in this order; ``--preempt oracle`` runs the first two only.
PREEMPT_ARMS = (PREEMPT_ARM, PREEMPT_RANDOM_ARM, PREEMPT_ORACLE_ARM)
