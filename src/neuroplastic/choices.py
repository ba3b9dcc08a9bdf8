"""The values some settings may take, named here, without torch, so that the checks and the
command line's help need none: the ranking methods' defaults, the predictors ``--preempt``
takes, the forms of a device, the seeds' range and the label no concept is. A string setting
with fixed choices declares them as its ``Literal`` type instead
(:data:`neuroplastic.config.CHOICES`)."""

from __future__ import annotations

from neuroplastic.errors import NeuroplasticError

#: The predictors of neuroplastic.analysis.predict, which ``--preempt`` can take its neurons from
#: (named here so that the command line's help needs no torch).
PREDICTOR_NAMES = (
    "saliency_pruned",
    "saliency_base",
    "similarity",
    "gradient",
    "coactivation",
    "random",
)

#: The ranking method ``neuroplastic rank``, :func:`neuroplastic.api.rank_neurons` and
#: :meth:`neuroplastic.core.ranking.Ranking.from_stats` use unless told: the paper's. They look
#: at whatever model they are given, as the paper did; they are not a preview of a run's set (a
#: run ranks its own fine-tuned base on the probe sentences).
RANK_METHOD = "probeless"
#: The ranking method a run uses unless told (``ExperimentConfig.method``). Not the paper's: on
#: NER probeless ranks first the neurons that separate *every* entity type from O, so ablating
#: them removes PER as much as LOC; selectivity removes LOC alone (docs/method.md).
RUN_METHOD = "selectivity"

DEVICE_FORMS = "cpu, cuda, cuda:N (N a GPU index, e.g. cuda:0) or mps"
#: the largest seed: Python's and torch's generators take seeds in [0, 2**32 - 1]
SEED_MAX = 2**32 - 1

#: What ``--preempt`` takes its neurons from: a predictor, or ``oracle``, the concept arm's
#: realised top gainers (hindsight: what no predictor can beat).
PREEMPT_CHOICES = (*PREDICTOR_NAMES, "oracle")
#: Choices of settings that may also be left unset (None).
OPTIONAL_CHOICES = {"preempt": PREEMPT_CHOICES}

#: the IOB outside label: what no entity is, so never a concept
OUTSIDE_LABEL = "O"


def check_concept(concept: str) -> None:
    """Refuse the outside label as a concept before any work (it has no entity F1 to lose)."""
    if concept == OUTSIDE_LABEL:
        raise NeuroplasticError(
            "--concept O is the outside label (tokens of no entity), not a concept; give an "
            "entity type such as LOC, PER, ORG or MISC"
        )
