"""Run under ``torchrun --nproc_per_node N`` by tests/experiment/test_distributed.py.

stats OUT                      neuron statistics of tiny-bert on 60 validation sentences; rank 0
                               saves them
run OUT CONFIG CHECKS [STOP]   what ``neuroplastic run --out OUT --config CONFIG`` runs; at
                               the end of every stage with held neurons each rank measures them
                               on its own replica and writes CHECKS/rank-{r}.json (outside the
                               run directory, which only rank 0 writes; with --removal
                               leace|direction, its erasure); STOP ("arm:stage") ends every rank
                               after it
"""

import hashlib
import json
import os
import sys
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def stats(out: str) -> None:
    from neuroplastic import distributed
    from neuroplastic.core.models import load_model
    from neuroplastic.core.stats import collect_stats
    from neuroplastic.data.load import encode_split, load_corpus

    distributed.init_from_environment("cpu")
    model = load_model("tiny-bert", seed=0)
    corpus = load_corpus(n_train=300, n_validation=80, seed=3)
    dataset = encode_split(corpus, model.tokenizer, "validation", limit=60)
    result = collect_stats(model, dataset, batch_size=8, top_k=5, progress=False)
    if distributed.is_main():
        result.save(out)
    print(f"rank {distributed.rank()} of {distributed.world_size()}: done", flush=True)


def run(out: str, config: str, checks: str, stop: str = "") -> None:
    from neuroplastic import distributed
    from neuroplastic.cli.commands import _config, _parser
    from neuroplastic.experiment.pipeline import run_experiment

    rank = int(os.environ["RANK"])
    found: list[dict] = []

    def check(event) -> None:
        setup, arm, stage = event.setup, event.arm, event.stage
        if event.moment == "trained" and event.dead is not None:
            found.append({"arm": arm, "stage": stage, **held_neurons(setup, event.dead)})
        elif event.moment == "trained" and setup.config.removal != "neurons" and stage != "base":
            found.append({"arm": arm, "stage": stage, **held_erasure(setup, arm, event.held)})
        if event.moment == "finished" and f"{arm}:{stage}" == stop:
            raise SystemExit(3)  # as if killed after this stage, on every rank

    args = _parser().parse_args(["run", "--out", out, "--config", config, "--no-report"])
    try:  # as ``neuroplastic run`` calls it, with the checks told of every stage
        run_experiment(_config(args), out, progress=False, on_stage=check)
    finally:
        distributed.finish()
        report = {"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "checks": found}
        Path(checks, f"rank-{rank}.json").write_text(json.dumps(report))
    raise SystemExit(0)


def held_neurons(setup, dead) -> dict:
    """The largest |activation| of the held neurons on this replica over a batch of probe
    sentences (every real token), and a digest of the replica's weights."""
    import torch

    from neuroplastic.core.models import mlp_hook_name, run_forward

    captured = {}

    def capture(layer, activation, hook):
        captured[layer] = activation.detach()

    layers = dead.any(-1).nonzero().flatten().tolist()
    batch = setup.probe_data.collate(list(range(min(16, len(setup.probe_data)))))
    hooks = [(mlp_hook_name(layer), partial(capture, layer)) for layer in layers]
    with torch.no_grad(), setup.model.hooks(fwd_hooks=hooks):
        run_forward(setup.model, batch.tokens, batch.attention_mask)
    real = batch.attention_mask.bool()
    largest = max(float(captured[layer][real][:, dead[layer]].abs().max()) for layer in layers)
    digest = hashlib.sha256()
    for name, parameter in setup.module.named_parameters():
        digest.update(name.encode() + parameter.detach().cpu().numpy().tobytes())
    return {
        "max_abs": largest,
        "held": int(dead.sum()),
        "tokens": int(real.sum()),
        "layers": layers,
        "weights": digest.hexdigest(),
    }


def held_erasure(setup, arm: str, held) -> dict:
    """On this replica, with ``arm``'s erasure held: whether its hooks (``held``, as the stage
    event hands them) are registered, the largest change erasing the residual stream once more
    makes at each erased layer (0 where the erasure holds: a projection erases nothing twice),
    and digests of the erasure's tensors and of the replica's weights."""
    import torch

    from neuroplastic.core.erasure import resid_hook_name
    from neuroplastic.core.models import run_forward

    erasure = setup.erasures[arm]
    captured = {}

    def capture(layer, x, hook):
        captured[layer] = x.detach()

    batch = setup.probe_data.collate(list(range(min(16, len(setup.probe_data)))))
    hooks = [(resid_hook_name(layer), partial(capture, layer)) for layer in erasure.layers]
    with torch.no_grad(), setup.model.hooks(fwd_hooks=hooks):
        run_forward(setup.model, batch.tokens, batch.attention_mask)
    real = batch.attention_mask.bool()
    again = max(
        float((erasure.apply(layer, x[real]) - x[real]).abs().max())
        for layer, x in captured.items()
    )
    tensors = hashlib.sha256()
    for part in (erasure.left, erasure.right, erasure.bias):
        for layer in erasure.layers:
            tensors.update(part[layer].cpu().numpy().tobytes())
    weights = hashlib.sha256()
    for name, parameter in setup.module.named_parameters():
        weights.update(name.encode() + parameter.detach().cpu().numpy().tobytes())
    return {
        "active": bool(held is not None and held.active),
        "erased_again": again,
        "scale": max(float(x[real].abs().max()) for x in captured.values()),
        "kind": erasure.kind,
        "erasure": tensors.hexdigest(),
        "weights": weights.hexdigest(),
    }


if __name__ == "__main__":
    {"stats": stats, "run": run}[sys.argv[1]](*sys.argv[2:])
