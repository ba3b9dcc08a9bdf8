"""The benchmark's comparators compute what they claim to, so its ratios compare like with like."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.load import encode_split

# Minutes of model runs and subprocesses: outside the quick loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cache_then_rank_ranks_as_the_streaming_pass(tiny_gpt2, corpus):
    bench = load_bench()
    data = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=40)
    from_cache = bench.cache_then_rank(tiny_gpt2, data)
    streamed = Ranking.from_stats(
        collect_stats(tiny_gpt2, data, batch_size=32, top_k=20, progress=False), "LOC", "probeless"
    )
    torch.testing.assert_close(from_cache.scores, streamed.scores, rtol=1e-5, atol=1e-6)
    assert torch.equal(from_cache.alive, streamed.alive)


def test_benchmark_writes_its_figures(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--model", "tiny-gpt2", "--sentences", "24",
         "--sections", "stats,train,probe,fold,sort,prefilter,sums,overlap,eval,adamw,grouping",
         "--sizes", "24",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["header"]["sentences"] == 24
    stats, train = figures["stats"], figures["train"]
    assert set(stats["seconds"]) >= {"floor", "stats", "cache_then_rank"}
    assert stats["stats_over_floor"] == stats["seconds"]["stats"] / stats["seconds"]["floor"]
    assert train["held_over_plain"] > 0 and train["train_tokens_per_s"] > 0
    for section, ratios in (
        ("fold", ("folded_over_floor", "every_batch_over_floor")),
        ("sort", ("one_sort_over_floor", "two_sorts_over_floor")),
        ("overlap", ("inline_over_floor", "side_stream_over_floor")),
    ):
        result = figures[section]
        assert result["same_statistics"] is True
        assert all(result[ratio] > 0 for ratio in ratios)
    prefilter = figures["prefilter"]["24"]  # one result per --sizes
    assert prefilter["same_statistics"] is True
    assert prefilter["blocked_over_floor"] > 0 and prefilter["every_value_over_floor"] > 0
    sums = figures["sums"]["24"]
    assert sums["same_statistics"] is True
    assert sums["index_over_floor"] > 0 and sums["matmul_over_floor"] > 0
    assert sums["largest_relative_sum_difference"] < 1e-5
    probe = figures["probe"]
    assert probe["own_probes_over_stats"] > 1 and probe["tapped_probes_over_stats"] > 0
    assert probe["largest_auc_difference"] < 1e-4  # the same probes, wherever they read
    adamw = figures["adamw"]
    assert set(adamw["seconds_per_step"]) == {"default", "fused"}
    assert adamw["fused_over_default"] > 0 and adamw["largest_weight_change"] > 0
    # not a rounding difference here: tiny-gpt2 (a TransformerLens bridge) lists the same
    # weights under several names, and fused moves them further (RESULTS.md)
    assert 0 < adamw["largest_weight_difference"] < 1
    evaluation = figures["eval"]
    assert evaluation["same_scores"] is True
    computed = evaluation["computed_tokens"]
    assert evaluation["real_tokens"] <= computed["by_length"] <= computed["corpus_order"]
    grouping = figures["grouping"]
    assert grouping["steps"] == 10 and grouping["grouped_over_plain"] > 0
    tokens = grouping["tokens_over_100_steps"]
    assert tokens["plain"]["real"] == tokens["groups_of_10"]["real"]
    assert tokens["groups_of_10"]["computed"] < tokens["plain"]["computed"]
    # The hold's extra cost, by op (times on a shared CPU are too noisy to assert which).
    extra = train["held_minus_plain_by_op"]
    assert extra["top"] and all({"op", "extra_ms"} == set(row) for row in extra["top"])
