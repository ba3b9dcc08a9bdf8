"""Run under ``torchrun --nproc_per_node N`` by tests/test_distributed.py (not a test module).

stats OUT   neuron statistics of tiny-bert on 60 validation sentences; rank 0 saves them
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def stats(out: str) -> None:
    from neuroplastic import distributed
    from neuroplastic.data.load import encode_split, load_corpus
    from neuroplastic.models import load_model
    from neuroplastic.stats import collect_stats

    distributed.init_from_environment("cpu")
    model = load_model("tiny-bert", seed=0)
    corpus = load_corpus(n_train=300, n_validation=80, seed=3)
    dataset = encode_split(corpus, model.tokenizer, "validation", limit=60)
    result = collect_stats(model, dataset, batch_size=8, top_k=5, progress=False)
    if distributed.is_main():
        result.save(out)
    print(f"rank {distributed.rank()} of {distributed.world_size()}: done", flush=True)


if __name__ == "__main__":
    {"stats": stats}[sys.argv[1]](*sys.argv[2:])
