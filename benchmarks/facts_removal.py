"""Which removal takes capital facts from SmolLM2? Forget-V and retain accuracy with the top
fraction of MLP neurons held at zero, by ranker, beside each selectivity set's random control
(as many neurons per layer). One seed's split, no retraining: how the facts study's default
(`ratio`, 2%) was chosen.

Neurons are ranked on the facts study's recall positions (the subject's last token and the
prompt's last token of every training phrasing), forget (capital_of) against retain
(country_of). Accuracy is multiple choice among four answers (chance 0.25) and greedy exact
match, asked with the evaluation template no ranking sentence uses.

    nice python benchmarks/facts_removal.py --root runs/facts-smollm2 \
        --out benchmarks/results/facts-removal-smollm2-cpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from neuroplastic.core.ablation import ablate
from neuroplastic.core.models import load_model
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.facts import FORGET
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.experiment.facts_scoring import measure
from neuroplastic.facts_config import FactsConfig
from neuroplastic.io import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="a facts study directory")
    parser.add_argument("--methods", default="selectivity,ratio")
    parser.add_argument("--fractions", default="0.01,0.02,0.05")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retain-questions", type=int, default=60)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.time()
    config = FactsConfig(seed=args.seed, retain_questions=args.retain_questions)
    model = load_model(config.model)
    model.eval()
    data = StudyData(model, config, args.root)
    stats = collect_stats(model, data.recall, batch_size=32, progress=False)
    methods = args.methods.split(",")
    rows = []
    for method in methods:
        ranking = Ranking.from_stats(stats, FORGET, method)
        for fraction in [float(f) for f in args.fractions.split(",")]:
            removal = NeuronSet.top_fraction(ranking, fraction)
            arms = {"removal": removal}
            if method == methods[0]:
                arms["control"] = removal.random_matching(seed=args.seed)
            for arm, neurons in arms.items():
                with ablate(model, neurons):
                    scores = measure(model, data, ("forget_v", "retain"))
                rows.append({"method": method, "fraction": fraction, "arm": arm, **scores})
                print(rows[-1], flush=True)
    atomic_write_json(
        args.out,
        {
            "model": config.model,
            "seed": args.seed,
            "sizes": data.sizes(),
            "machine": f"{platform.machine()}, {os.cpu_count()} threads",
            "seconds": round(time.time() - started),
            "command": "python benchmarks/facts_removal.py --root runs/facts-smollm2 --out "
            "benchmarks/results/facts-removal-smollm2-cpu.json",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
