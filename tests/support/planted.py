"""A planted relocation: a tiny BERT whose removed concept can only go to chosen neurons, for
the predictor tests and the chase's (the ``planted`` fixture)."""

from __future__ import annotations

import pytest
import torch

from neuroplastic.analysis.predict import ground_truth
from neuroplastic.core.ablation import mlp_neuron_weights
from neuroplastic.core.models import load_model
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.training import TokenClassifier
from neuroplastic.data.load import encode_split

CONCEPT = "LOC"


def removed_of(model) -> NeuronSet:
    return NeuronSet.of(model.cfg.n_layers, model.cfg.d_mlp, [(0, 1), (0, 5), (1, 2), (1, 63)])


def classifier(model, data) -> TokenClassifier:
    torch.manual_seed(0)  # the head
    return TokenClassifier(model, len(data.tag_names)).eval()


PLANTED = [(0, 3), (0, 17), (0, 40), (0, 62), (1, 0), (1, 9), (1, 33), (1, 50)]


@pytest.fixture(scope="module")
def planted(corpus):
    """A tiny BERT in which, once the removed neurons are ablated, the concept's loss can only
    run through the ``PLANTED`` neurons: every other survivor's output weights are zero, so it
    changes nothing downstream and its gradient is exactly zero. With the concept removed, the
    planted neurons are where it can go; the rankings below say it went there: they were the
    least salient survivors at the pruned stage and are the most salient at the last one."""
    model = load_model("tiny-bert", seed=0)  # our own copy: its weights are edited
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    removed = removed_of(model)
    routes = removed.mask() | NeuronSet.of(n_layers, d_mlp, PLANTED).mask()
    with torch.no_grad():
        for layer in range(n_layers):
            _, _, w_out = mlp_neuron_weights(model, layer)
            silent = torch.nonzero(~routes[layer]).flatten()
            w_out.tensor.index_fill_(w_out.neuron_dim, silent, 0.0)
    data = encode_split(corpus, model.tokenizer, "validation", limit=12)
    module = classifier(model, data)
    planted_mask = NeuronSet.of(n_layers, d_mlp, PLANTED).mask()
    generator = torch.Generator().manual_seed(5)
    pruned_scores = torch.randn(n_layers, d_mlp, generator=generator) - 10 * planted_mask
    last_scores = pruned_scores + 20 * planted_mask
    pruned = Ranking(CONCEPT, "probeless", pruned_scores, ~removed.mask())
    last = Ranking(CONCEPT, "probeless", last_scores, ~removed.mask())
    n_candidates = int((~removed.mask()).sum())
    truth = ground_truth(pruned, last, removed, top=len(PLANTED) / n_candidates)
    yield module, data, removed, pruned, truth, planted_mask
