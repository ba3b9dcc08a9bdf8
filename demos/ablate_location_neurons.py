"""Rank neurons for location names, ablate them with hooks, and see what changes.

python demos/ablate_location_neurons.py                 # embedded MiniLM, offline
python demos/ablate_location_neurons.py --model gpt2    # any TransformerLens model (network)
"""

import argparse

import torch

from neuroplastic.ablation import ablate
from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.models import load_model, mlp_hook_name
from neuroplastic.neurons import NeuronSet
from neuroplastic.ranking import Ranking
from neuroplastic.stats import collect_stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--top", type=int, default=50)
    args = parser.parse_args()

    model = load_model(args.model)
    corpus = load_corpus(n_train=10, n_validation=args.sentences)
    data = encode_split(corpus, model.tokenizer, "validation")
    stats = collect_stats(model, data)
    ranking = Ranking.from_stats(stats, "LOC", method="probeless")
    neurons = NeuronSet.top_k(ranking, args.top)
    print(f"{neurons.description}: per layer {neurons.per_layer_counts()}")

    layer, neuron = neurons.neurons[0]
    batch = data.collate([0, 1, 2, 3])
    name = mlp_hook_name(layer)
    _, cache = model.run_with_cache(
        batch.tokens, attention_mask=batch.attention_mask, names_filter=lambda n: n == name
    )
    # Hooks are held inside the block and removed on exit, even after an exception.
    with ablate(model, neurons):
        _, ablated = model.run_with_cache(
            batch.tokens, attention_mask=batch.attention_mask, names_filter=lambda n: n == name
        )
    before = cache[name][..., neuron].abs().max().item()
    after = ablated[name][..., neuron].abs().max().item()
    print(f"neuron {layer}:{neuron} max |activation|: {before:.3f} -> {after:.3f} when ablated")
    print("hooks left on the model:", sum(len(h.fwd_hooks) for h in model.hook_dict.values()))
    torch.set_printoptions(precision=3)


if __name__ == "__main__":
    main()
