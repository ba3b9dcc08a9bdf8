"""Where the statistics pass spends its time beyond the forward pass, and how the ratio to the
forward moves with the batch size; prints one JSON line per (model, batch size).

    python benchmarks/profile_stats.py --model M [--device cuda] [--dtype bfloat16]
                                       [--dataset D] [--batch-sizes 32,128]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from neuroplastic.core.models import load_model, mlp_hook_name, model_device, run_forward
from neuroplastic.core.stats import collect_stats


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", Path(__file__).with_name("bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch-sizes", default="32,128")
    args = parser.parse_args()
    bench = load_bench()
    bench.DATASET = args.dataset
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    device = model_device(model)
    data = bench.dataset_of(model, args.sentences)
    last = mlp_hook_name(model.cfg.n_layers - 1)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):

        def floor(batch_size=batch_size):
            with torch.no_grad():
                for batch in data.batches(batch_size):
                    run_forward(model, batch.tokens, batch.attention_mask, stop_at=last)

        def stats(batch_size=batch_size):
            collect_stats(model, data, batch_size=batch_size, top_k=20, progress=False)

        times = bench.interleaved({"floor": floor, "stats": stats}, device)
        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if device.type == "cuda" else []
        )
        with profile(activities=activities) as prof:
            stats()
            bench.synchronize(device)
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
        total = sum(getattr(e, key) for e in rows) or 1
        top = [
            {"op": e.key, "share": round(getattr(e, key) / total, 3), "calls": e.count}
            for e in rows[:12]
        ]
        launches = sum(e.count for e in rows if e.key.startswith(("cudaLaunchKernel", "cuLaunch")))
        print(
            json.dumps(
                {
                    "model": args.model,
                    "batch_size": batch_size,
                    "seconds": times,
                    "stats_over_floor": times["stats"] / times["floor"],
                    "kernel_launches": launches,
                    "top_ops": top,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
