"""What the predictors and ground truths of :mod:`neuroplastic.analysis.predict` are called and
what each means, in a module without torch, so that the sweep report and the command line's help
read them without loading the model stack."""

#: the ground truths (see :func:`neuroplastic.analysis.predict.ground_truth`)
TRUTHS = ("gain", "entered", "last_top")
#: one line per predictor and truth, for the reports' tables
DESCRIPTIONS = {
    "saliency_pruned": "saliency for the concept at the pruned stage",
    "saliency_base": "saliency for the concept at base, before the removal",
    "similarity": "similarity of the neuron's base top tokens to the concept's tokens (primed)",
    "gradient": "mean |activation x gradient| of the concept's loss on its tokens, at the "
    "pruned stage",
    "coactivation": "|correlation| with the removed neurons on the concept's tokens, at base",
    "random": "a seeded random score: the floor",
    "gain": "the top 1% of survivors by saliency gain from the pruned to the last stage",
    "entered": "in the top 1% of survivors at the last stage, not at the pruned stage",
    "last_top": "in the top 1% of survivors at the last stage (no difference with the pruned "
    "stage, so no predictor read there is part of it)",
}
