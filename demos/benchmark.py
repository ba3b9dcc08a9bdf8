"""Benchmarks behind the README's figures; prints ratios, not pass/fail.

    python demos/benchmark.py [--model embedded] [--sentences 256]

1. streaming statistics vs a full activation cache: memory held and time;
2. stopping the forward pass at the last hook point needed vs running the vocabulary head;
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.models import load_model, mlp_hook_name, run_forward
from neuroplastic.stats import collect_stats


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up: kernels pick their plans on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--sentences", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    data = encode_split(
        load_corpus(n_train=10, n_validation=args.sentences), model.tokenizer, "validation"
    )
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    n_tokens = sum(len(e.token_ids) for e in data.encoded)
    print(
        f"{args.model}: {n_layers} layers x {d_mlp} neurons, {len(data)} sentences, "
        f"{n_tokens} tokens; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads"
    )

    def full_cache():
        caches = []
        with torch.no_grad():
            for batch in data.batches(32):
                _, cache = model.run_with_cache(
                    batch.tokens,
                    attention_mask=batch.attention_mask,
                    names_filter=lambda n: n.endswith("mlp.hook_post"),
                )
                caches.append(torch.stack([cache[mlp_hook_name(i)] for i in range(n_layers)]))
        return caches

    streaming_s = timed(lambda: collect_stats(model, data, top_k=20, progress=False))
    cache_s = timed(full_cache)
    stats = collect_stats(model, data, top_k=20, progress=False)
    stats_bytes = sum(
        t.numel() * t.element_size()
        for t in (
            stats.count,
            stats.sum,
            stats.sum_sq,
            stats.top_values,
            stats.top_sentence,
            stats.top_position,
            stats.top_token,
            stats.top_label,
        )
    )
    cache_bytes = sum(c.numel() * c.element_size() for c in full_cache())
    print(
        f"1. statistics held: streaming {stats_bytes / 2**20:.1f} MiB (fixed) vs full cache "
        f"{cache_bytes / 2**20:.1f} MiB (grows with tokens): {cache_bytes / stats_bytes:.1f}x "
        f"less; time {streaming_s:.2f}s vs {cache_s:.2f}s ({cache_s / streaming_s:.2f}x)"
    )

    batch = data.collate(list(range(min(32, len(data)))))
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        full_s = timed(
            lambda: model(batch.tokens, attention_mask=batch.attention_mask, return_type="logits"),
            repeats=5,
        )
        stop_s = timed(
            lambda: run_forward(model, batch.tokens, batch.attention_mask, stop_at=last), repeats=5
        )
    print(
        f"2. forward to the last residual stream: {stop_s * 1000:.0f} ms vs {full_s * 1000:.0f}"
        f" ms with the vocabulary head ({full_s / stop_s:.2f}x faster)"
    )


if __name__ == "__main__":
    main()
