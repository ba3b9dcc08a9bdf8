"""Data-parallel runs: 2 CPU processes (gloo) launched by torchrun, against one process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from neuroplastic.data.load import encode_split
from neuroplastic.stats import NeuronStats, collect_stats

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, n: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_give_the_statistics_of_one(tmp_path, tiny_bert, corpus):
    torchrun("stats", str(tmp_path / "stats.safetensors"))
    merged = NeuronStats.load(tmp_path / "stats.safetensors")
    dataset = encode_split(corpus, tiny_bert.tokenizer, "validation", limit=60)
    single = collect_stats(tiny_bert, dataset, batch_size=8, top_k=5, progress=False)
    assert torch.equal(merged.count, single.count)
    # The same batches on either side; only the order of the additions differs.
    torch.testing.assert_close(merged.sum, single.sum, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.sum_sq, single.sum_sq, rtol=1e-12, atol=1e-12)
    assert torch.equal(merged.top_values, single.top_values)
    # Sentence indices stay global: each stored entry is the one a single pass stored, except
    # that of several tokens with exactly equal activations (repeated words in one template)
    # either may be kept.
    assert entries(merged) == entries(single)
    assert len(entries(single)) > single.top_values.numel() // 2


def entries(stats: NeuronStats) -> set[tuple]:
    rows = set()
    for layer in range(stats.n_layers):
        for neuron in range(stats.d_mlp):
            values = stats.top_values[layer, neuron].tolist()
            for j, value in enumerate(values):
                if values.count(value) == 1:
                    where = [
                        int(getattr(stats, name)[layer, neuron, j])
                        for name in ("top_sentence", "top_position", "top_token", "top_label")
                    ]
                    rows.add((layer, neuron, value, *where))
    return rows
