"""Is a neuron removal in a causal LM the concept's? Ranked at the concept's own tokens or at the
positions that predict them, against the paired random control, across seeds.

No fine-tuning: the pretrained model as it is, its MLP neurons ranked for LOC on the embedded
corpus's probe sentences, the top ``--fractions`` held at zero, and the next-token loss on the
validation sentences measured at LOC tokens and at every other token. A removal is the
concept's when it raises the loss on LOC tokens more than on the others (``specificity`` =
rise on LOC - rise on the others, in nats) and more than as many random neurons per layer do
(the paired control: same layers, same counts, drawn with the seed). A seed draws the corpus
(probe and validation sentences) and the control; seeds are the unit of replication.

    python benchmarks/llm_specificity.py --model smollm2 --seeds 0,1,2,3,4 \
        --out benchmarks/results/specificity-smollm2-cpu.json

Resumable: each seed's rows are written as soon as it ends, and a seed already in ``--out`` is
skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from neuroplastic.analysis.intervals import paired
from neuroplastic.core.ablation import ablate
from neuroplastic.core.models import load_model
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.core.training import evaluate
from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.io import atomic_write_json


def lm_losses(model, data, concept: str) -> dict[str, float]:
    return evaluate(model, data, "lm", concept, progress=False).scores["lm_loss"]


def one_seed(model, args, seed: int) -> list[dict]:
    corpus = load_corpus(n_train=10, n_validation=args.validation, n_probe=args.probe, seed=seed)
    probe = encode_split(corpus, model.tokenizer, "probe", max_length=48)
    validation = encode_split(corpus, model.tokenizer, "validation", max_length=48)
    base = lm_losses(model, validation, args.concept)
    rows = []
    for positions in args.positions:
        data = probe.predicting() if positions == "predicting" else probe
        stats = collect_stats(model, data, top_k=1, progress=False)
        for method in args.methods:
            ranking = Ranking.from_stats(stats, args.concept, method)
            for fraction in args.fractions:
                concept_set = NeuronSet.top_fraction(ranking, fraction)
                arms = {"concept": concept_set, "random": concept_set.random_matching(seed)}
                row = {
                    "seed": seed,
                    "positions": positions,
                    "method": method,
                    "fraction": fraction,
                    "neurons": len(concept_set),
                    "base": base,
                }
                for arm, neurons in arms.items():
                    with ablate(model, neurons):
                        after = lm_losses(model, validation, args.concept)
                    rise = {k: after[k] - base[k] for k in after}
                    row[arm] = {
                        "lm_loss": after,
                        "rise": rise,
                        "specificity": rise["concept"] - rise["other"],
                    }
                rows.append(row)
                print(
                    f"seed {seed} {positions:>10} {method} {fraction:.3%}: specificity "
                    f"{row['concept']['specificity']:+.3f} vs random "
                    f"{row['random']['specificity']:+.3f}  (rise LOC "
                    f"{row['concept']['rise']['concept']:+.3f}, others "
                    f"{row['concept']['rise']['other']:+.3f})",
                    flush=True,
                )
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per setting, across seeds: each arm's specificity and the paired difference."""
    cells: dict[str, list[dict]] = {}
    for row in rows:
        cells.setdefault(f"{row['positions']}/{row['method']}/{row['fraction']}", []).append(row)
    out = {}
    for key, group in cells.items():
        group.sort(key=lambda r: r["seed"])
        out[key] = {
            "seeds": [r["seed"] for r in group],
            "concept_specificity": paired([r["concept"]["specificity"] for r in group]),
            "random_specificity": paired([r["random"]["specificity"] for r in group]),
            "concept_minus_random": paired(
                [r["concept"]["specificity"] - r["random"]["specificity"] for r in group]
            ),
            "concept_rise_on_concept": paired([r["concept"]["rise"]["concept"] for r in group]),
            "concept_rise_on_other": paired([r["concept"]["rise"]["other"] for r in group]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--concept", default="LOC")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--probe", type=int, default=300)
    parser.add_argument("--validation", type=int, default=160)
    parser.add_argument("--fractions", default="0.005,0.02")
    parser.add_argument("--methods", default="selectivity")
    parser.add_argument("--positions", default="own,predicting")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.methods = args.methods.split(",")
    args.positions = args.positions.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]

    done = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    rows = done["rows"]
    model = load_model(args.model)
    model.eval()
    for seed in seeds:
        if any(r["seed"] == seed for r in rows):
            continue
        started = time.time()
        rows += one_seed(model, args, seed)
        print(f"seed {seed}: {time.time() - started:.0f} s", flush=True)
        result = {
            "model": args.model,
            "concept": args.concept,
            "probe_sentences": args.probe,
            "validation_sentences": args.validation,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "command": "python benchmarks/llm_specificity.py "
            + " ".join(
                f"--{k} {v}"
                for k, v in (("model", args.model), ("seeds", args.seeds), ("out", args.out))
            ),
            "summary": summarise(rows),
            "rows": rows,
        }
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
