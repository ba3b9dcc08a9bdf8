"""Is the neuron removal's damage to the tagging head one of threshold? With the removal held,
shift the head's bias for the concept's tags (B-LOC and I-LOC, by one amount) and nothing else;
choose the shift on the probe sentences (never the validation sentences) and score it on the
validation sentences. A removal that only moved the concept below the head's decision boundary
is undone by a shift; one that scrambled the concept is not.

Needs a run made with --save-checkpoints (its base weights and removed neurons):

    neuroplastic run --out runs/head-bias-s0 --stages 1 --stage-steps 1 --save-checkpoints
    python benchmarks/head_bias.py runs/head-bias-s0 --out benchmarks/results/head-bias-cpu.json

The removal is the run's own (the default ranking and fraction: the base and neurons of the
default run of the same seed). Prints and writes JSON."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from neuroplastic.config import ExperimentConfig
from neuroplastic.core.ablation import ablate
from neuroplastic.core.head_reading import concept_tags
from neuroplastic.core.training import evaluate
from neuroplastic.experiment.pipeline import _setup
from neuroplastic.store.checkpoint import Checkpointer, load_weights
from neuroplastic.store.rundir import RunDir

SHIFTS = [0.5 * k for k in range(0, 25)]  # 0 to 12 nats on the concept's tags' logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    run = RunDir(args.run)
    config = ExperimentConfig.load(run.config_path)
    concept = config.concept
    with tempfile.TemporaryDirectory() as scratch:
        setup = _setup(config, Checkpointer(RunDir(scratch)), False, lambda *_: None)
        load_weights(setup.module, run.checkpoint_path("concept", "base"))
        setup.module.eval()
        head = setup.module.head
        tags = concept_tags(setup.validation_data.tag_names, concept)
        original = head.bias.detach().clone()

        def f1(data, shift: float) -> float:
            with torch.no_grad():
                head.bias.copy_(original)
                head.bias[tags] += shift
            scores = evaluate(setup.module, data, config.task, concept, progress=False).scores
            return scores["f1"][concept]

        base_validation = f1(setup.validation_data, 0.0)
        with ablate(setup.model, run.neurons("concept")):
            on_probe = {shift: f1(setup.probe_data, shift) for shift in SHIFTS}
            chosen = max(SHIFTS, key=lambda s: (on_probe[s], -s))
            on_validation = {shift: f1(setup.validation_data, shift) for shift in SHIFTS}
        with torch.no_grad():
            head.bias.copy_(original)
    recorded = run.summary()["arms"]["concept"]["stages"]
    pruned = next(s for s in recorded if s["stage"] == "pruned")["f1"][concept]
    result = {
        "what": (
            f"{concept} F1 with the run's neuron removal held and the head's bias for the "
            f"concept's tags shifted by one amount; the shift chosen on the probe sentences, "
            f"scored on the validation sentences. One seed ({config.seed})."
        ),
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "run": str(args.run),
        "base_f1": base_validation,
        "pruned_f1_recorded": pruned,
        "pruned_f1_here": on_validation[0.0],
        "chosen_shift": chosen,
        "shifted_f1": on_validation[chosen],
        "best_shift_on_validation": max(SHIFTS, key=lambda s: on_validation[s]),
        "probe_f1_by_shift": on_probe,
        "validation_f1_by_shift": on_validation,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
