"""Which facts does the base model know? Per relation: facts generated, known by multiple choice
(RTT's measure: the answer's summed log-likelihood beats three distractors of its relation),
known by greedy exact match, and both; beside them, multiple choice by the per-token mean
log-likelihood, the alternative :func:`~neuroplastic.data.facts.choice_log_likelihoods` argues
against.

Each fact is asked with its relation's first evaluation template ("The capital of France is",
"The city of Shanghai is located in the country of"), tokenized as ConceptDataset tokenizes it
(BOS and a leading space for SmolLM2). Chance is 1/4 for multiple choice.

    nice -n 10 python benchmarks/facts_known.py --model smollm2 \
        --out benchmarks/results/facts-known-smollm2-cpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from neuroplastic.core.fact_scores import (
    choice_log_likelihoods,
    known_facts,
    multiple_choice_correct,
)
from neuroplastic.core.models import load_model
from neuroplastic.data.facts import EVAL_TEMPLATES, RELATIONS, generate_facts
from neuroplastic.io import atomic_write_json


def per_relation(rows: list[dict]) -> dict[str, dict[str, int]]:
    out = {}
    for relation in RELATIONS:
        mine = [r for r in rows if r["relation"] == relation]
        out[relation] = {
            "facts": len(mine),
            "known_multiple_choice": sum(r["multiple_choice"] for r in mine),
            "known_greedy": sum(r["greedy_match"] for r in mine),
            "known_both": sum(r["multiple_choice"] and r["greedy_match"] for r in mine),
            "known_multiple_choice_mean": sum(r["multiple_choice_mean"] for r in mine),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n-cities", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="draws the distractors")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.time()
    model = load_model(args.model)
    facts = generate_facts(n_cities=args.n_cities)
    loaded = time.time()
    known, results = known_facts(model, facts, seed=args.seed, batch_size=args.batch_size)
    mean_scores = choice_log_likelihoods(
        model,
        [r.prompt for r in results],
        [r.choices for r in results],
        args.batch_size,
        reduction="mean",
    )
    by_mean = multiple_choice_correct(
        mean_scores, torch.tensor([r.answer_index for r in results])
    ).tolist()
    rows = [
        {
            "key": r.fact.key,
            "relation": r.fact.relation,
            "answer": r.fact.answer,
            "choices": list(r.choices),
            "multiple_choice": r.multiple_choice,
            "multiple_choice_mean": bool(mean),
            "greedy": r.greedy,
            "greedy_match": r.greedy_match,
        }
        for r, mean in zip(results, by_mean, strict=True)
    ]
    summary = per_relation(rows)
    for relation, counts in summary.items():
        print(relation, counts, flush=True)
    atomic_write_json(
        args.out,
        {
            "model": args.model,
            "n_cities": args.n_cities,
            "seed": args.seed,
            "templates": {r: EVAL_TEMPLATES[r][0] for r in RELATIONS},
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "seconds": {"load": round(loaded - started, 1), "score": round(time.time() - loaded)},
            "command": f"python benchmarks/facts_known.py --model {args.model} --out {args.out}",
            "summary": summary,
            "known_keys": [f.key for f in known],
            "rows": rows,
        },
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
