"""`neuroplastic rank` and `neuroplastic view`: look at a model's neurons for a concept, with no
run directory. Light at import: each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

#: the keys of ``rank --json``'s file (:meth:`neuroplastic.api.RankResult.to_json`)
RANK_JSON_KEYS = frozenset({"model", "concept", "method", "n_layers", "d_mlp", "neurons"})


def rank(args: argparse.Namespace) -> int:
    from neuroplastic.api import rank_neurons
    from neuroplastic.io import atomic_write_json

    if args.json:
        # before the work, not after it
        check_file_target(args.json, "--json", _is_rank_json, "a ranking `neuroplastic rank` wrote")
    result = rank_neurons(
        model=args.model,
        dataset=args.dataset,
        concept=args.concept,
        method=args.method,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        top_k_tokens=args.top_k_tokens,
        device=args.device,
        progress=not args.quiet,
    )
    print(
        f"{args.method} saliency for {args.concept} in {args.model} "
        f"({result.n_layers} layers x {result.d_mlp} neurons)"
    )
    print(f"{'rank':>5} {'layer':>5} {'neuron':>6} {'saliency':>9}  top tokens")
    for row in result.rows[: args.top]:
        if row["rank"] is None:
            print("(the other neurons never fired on these sentences: no rank)")
            break
        tokens = " ".join(repr(t) for t in row["top_tokens"][:8])
        print(
            f"{row['rank']:>5g} {row['layer']:>5} {row['neuron']:>6} {row['saliency']:>9.5f}  "
            f"{tokens}"
        )
    if args.json:
        atomic_write_json(args.json, result.to_json())
        print(f"wrote {len(result.rows)} neurons to {args.json}")
    return 0


def view(args: argparse.Namespace) -> int:
    from neuroplastic.core.models import check_mlp_hooks, load_model
    from neuroplastic.core.neurons import NeuronSet
    from neuroplastic.data.load import encode_split, load_corpus
    from neuroplastic.report.views import write_neuron_view_page

    check_file_target(args.out, "--out", _is_view_page, "a page `neuroplastic view` wrote")
    model = load_model(args.model, device=args.device)
    n_layers, d_mlp = check_mlp_hooks(model)
    neurons = NeuronSet.parse(args.neurons, n_layers, d_mlp)
    data = encode_split(load_corpus(args.dataset), model.tokenizer, args.split, limit=args.limit)
    path = write_neuron_view_page(
        model,
        data,
        neurons,
        args.out,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=not args.quiet,
        title=f"{args.model}: neurons {args.neurons}",
    )
    print(f"wrote {path}")
    return 0


def check_file_target(path: Path, flag: str, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse a directory, and an existing file that ``ours`` does not recognise as this
    command's own output (``what``): a dataset, a run's results or someone's notes would be
    lost. A file the command wrote before is replaced, as a rerun expects."""
    from neuroplastic.errors import NeuroplasticError

    if path.is_dir():
        raise NeuroplasticError(f"{flag} {path} is a directory; give a file path")
    if path.exists():
        try:
            recognised = ours(path)
        except (OSError, ValueError):
            recognised = False
        if not recognised:
            raise NeuroplasticError(
                f"{flag} {path} exists and is not {what}: not overwritten; give a new path, or "
                "move that file away first"
            )


def _is_rank_json(path: Path) -> bool:
    with open(path, encoding="utf-8") as file:
        written = json.load(file)
    return isinstance(written, dict) and RANK_JSON_KEYS <= set(written)


def _is_view_page(path: Path) -> bool:
    from neuroplastic.report.html import VIEW_GENERATOR, generated_by

    return generated_by(path, VIEW_GENERATOR)
