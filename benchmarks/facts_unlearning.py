"""Which settings of gradient difference and RMU take capital facts from SmolLM2? Forget-V,
held-out and retain accuracy and the general loss after each weight edit, on one seed's split,
no retraining: how the facts study's defaults for ``--removal graddiff|rmu`` were chosen.

Each candidate edits the base weights on the forget facts (T and V) against the retain facts,
is measured, and is undone before the next. Accuracy is multiple choice among four answers
(chance 0.25) and greedy exact match, asked with the evaluation template no training sentence
uses. Rows are written as they finish; a rerun skips the candidates already in ``--out``.

    nice python benchmarks/facts_unlearning.py --root runs/facts-smollm2 \\
        --out benchmarks/results/facts-unlearning-smollm2-cpu.json \\
        --candidates "graddiff:graddiff_lr=3e-5" "rmu:rmu_steering=4,rmu_lr=5e-5"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import fields, replace
from pathlib import Path

from neuroplastic.core.models import load_model
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.experiment.facts_removals import _unlearn
from neuroplastic.experiment.facts_scoring import measure
from neuroplastic.experiment.facts_states import restored
from neuroplastic.facts_config import FactsConfig
from neuroplastic.io import atomic_write_json

PARTS = ("forget_v", "forget_t", "held_out", "retain", "general")


def candidate(spec: str, config: FactsConfig) -> FactsConfig:
    """``"rmu:rmu_steering=4,rmu_lr=5e-5"`` as the config it names."""
    removal, _, settings = spec.partition(":")
    types = {f.name: type(f.default) for f in fields(FactsConfig)}
    values: dict[str, object] = {}
    for item in filter(None, settings.split(",")):
        name, _, value = item.partition("=")
        # A tuple of layers is written with "+": rmu_updated_layers=10+11+12.
        parse = (
            (lambda v: tuple(int(x) for x in v.split("+"))) if types[name] is tuple else types[name]
        )
        values[name] = parse(value)
    return replace(config, removal=removal, **values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="a facts study directory")
    parser.add_argument("--candidates", nargs="+", required=True, metavar="REMOVAL:K=V,...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retain-questions", type=int, default=60)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    base_config = FactsConfig(
        seed=args.seed, retain_questions=args.retain_questions, held_out=0.5, removal="rmu"
    )
    result = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    done = {row["candidate"] for row in result["rows"]}
    model = load_model(base_config.model)
    model.eval()
    data = StudyData(model, base_config, args.root)
    base_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if "base" not in result:
        result["base"] = measure(model, data, PARTS)
    result |= {
        "what": __doc__.split("\n\n")[0],
        "model": base_config.model,
        "seed": args.seed,
        "sizes": data.sizes(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{__import__('torch').get_num_threads()}",
    }
    atomic_write_json(args.out, result)
    for spec in args.candidates:
        if spec in done:
            continue
        config = candidate(spec, base_config)
        started = time.time()
        with restored(model, base_weights):
            record = _unlearn(model, data, config, data.train["same"])
            scores = measure(model, data, PARTS)
        history = record.pop("history")
        row = {
            "candidate": spec,
            "settings": {k: v for k, v in config.to_dict().items() if k.startswith(config.removal)},
            **record,
            "first_losses": history[0],
            "last_losses": history[-1],
            **scores,
            "seconds": round(time.time() - started, 1),
        }
        result["rows"].append(row)
        atomic_write_json(args.out, result)
        print(
            f"{spec}: V {scores['forget_v']['multiple_choice']:.3f} held-out "
            f"{scores['held_out']['multiple_choice']:.3f} retain "
            f"{scores['retain']['multiple_choice']:.3f} general {scores['general_loss']:.3f} "
            f"({row['seconds']} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
