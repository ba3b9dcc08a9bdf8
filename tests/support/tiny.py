"""The tiny-model experiment settings the tests share: a whole run takes seconds."""

from neuroplastic.config import ExperimentConfig

TINY = dict(
    probe_sentences=40,
    model="tiny-bert",
    train_sentences=96,
    validation_sentences=32,
    base_steps=6,
    stages=2,
    stage_steps=3,
    batch_size=8,
    top_k_tokens=5,
    fraction=0.1,
    learning_rate=1e-3,
    # stage ends only, as the suite's expectations were written for (test_eval_grid.py covers
    # the default dense grid)
    eval_grid="uniform",
)


def tiny_config(**overrides) -> ExperimentConfig:
    return ExperimentConfig(**{**TINY, **overrides})


def without_provenance(value):
    """``value`` (a summary, a sweep) without the one key base sharing adds, wherever it sits:
    where a run's base weights came from (which run trained them, not what they are)."""
    if isinstance(value, dict):
        return {k: without_provenance(v) for k, v in value.items() if k != "shared_from"}
    if isinstance(value, list):
        return [without_provenance(v) for v in value]
    return value


def quiet(*_: object) -> None:
    """A ``log`` that prints nothing."""


#: A facts study on tiny-llama with held-out facts (weight edits need them): seconds a seed.
FACTS_TINY = dict(
    model="tiny-llama",
    max_facts=24,
    held_out=0.5,
    steps=2,
    retain_questions=8,
    general_sentences=8,
    protocols=("heldout",),
    rmu_layer=1,
    rmu_updated_layers=(0, 1),
)
