import json

import pytest

CONLL = "Paris B-LOC\nis O\nlovely O\n\nAnn B-PER\nlives O\nin O\nRome B-LOC\n"


def test_rank_prints_and_writes_every_neuron(cli, tmp_path):
    out = tmp_path / "rank.json"
    code, stdout, _ = cli(
        "rank",
        "--model",
        "tiny-gpt2",
        "--limit",
        "30",
        "--top",
        "3",
        "--json",
        str(out),
        "--quiet",
    )
    assert code == 0
    assert "saliency" in stdout and len(stdout.strip().splitlines()) == 2 + 3 + 1
    data = json.loads(out.read_text())
    assert {k: data[k] for k in ("model", "concept", "method", "n_layers", "d_mlp")} == {
        "model": "tiny-gpt2",
        "concept": "LOC",
        "method": "probeless",
        "n_layers": 2,
        "d_mlp": 64,
    }
    neurons = data["neurons"]
    assert len(neurons) == 128
    assert [n["rank"] for n in neurons] == list(range(128))
    saliencies = [n["saliency"] for n in neurons]
    assert saliencies == sorted(saliencies, reverse=True)
    assert saliencies[0] == 1.0 and saliencies[-1] == 0.0
    assert set(neurons[0]) == {"layer", "neuron", "saliency", "rank", "top_tokens"}
    assert len(neurons[0]["top_tokens"]) == 10


def test_rank_on_a_conll_file_with_smd(cli, tmp_path, tiny_bert):
    from neuroplastic.core.ranking import Ranking
    from neuroplastic.core.stats import collect_stats
    from neuroplastic.data.conll import read_conll
    from neuroplastic.data.load import encode_split

    path = tmp_path / "data.txt"
    path.write_text(CONLL * 3)
    out = tmp_path / "rank.json"
    code, stdout, _ = cli(
        "rank", "--model", "tiny-bert", "--dataset", str(path), "--method", "smd",
        "--split", "train", "--top", "5", "--json", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0 and "smd saliency for LOC" in stdout
    # The library's own path on the same sentences: the same neurons in the same order, and
    # the printed top five are its first five.
    data = encode_split(read_conll(path), tiny_bert.tokenizer, "train")
    ranking = Ranking.from_stats(collect_stats(tiny_bert, data, progress=False), "LOC", "smd")
    ranked = [n for n in json.loads(out.read_text())["neurons"] if n["rank"] is not None]
    assert [(n["layer"], n["neuron"]) for n in ranked] == ranking.top(ranking.n_alive)
    printed = [tuple(map(int, line.split()[1:3])) for line in stdout.splitlines()[2:7]]
    assert printed == ranking.top(5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--concept", "LOCATION"], "unknown concept label 'LOCATION'; labels present: O, LOC"),
        (["--dataset", "missing/dir/train.txt"], "dataset path not found"),
        (["--method", "oracle"], "invalid choice: 'oracle'"),
        (["--batch-size", "0"], "argument --batch-size: must be positive, got 0"),
        (["--model", "./no-such-model"], "model directory not found"),
    ],
)
def test_rank_bad_input(cli, args, message):
    code, stdout, stderr = cli("rank", "--model", "tiny-gpt2", "--limit", "8", "--quiet", *args)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr


def test_malformed_and_conceptless_conll(cli, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Paris B-LOC\nis O\nlovely\n")
    code, _, stderr = cli("rank", "--model", "tiny-gpt2", "--dataset", str(bad))
    assert code == 2 and f"{bad}, line 3" in stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, stderr = cli("rank", "--model", "tiny-gpt2", "--dataset", str(empty))
    assert code == 2 and "no sentences" in stderr
    no_loc = tmp_path / "noloc.txt"
    no_loc.write_text("Ann B-PER\nsings O\n\nBob B-PER\nruns O\n\nIBM B-ORG\nwins O\n")
    code, _, stderr = cli(
        "rank",
        "--model",
        "tiny-gpt2",
        "--dataset",
        str(no_loc),
        "--split",
        "train",
        "--quiet",
    )
    assert code == 2 and "unknown concept label 'LOC'; labels present: O, PER, ORG" in stderr


def test_run_refuses_a_changed_config(cli, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": "tiny-bert", "seed": 1}))
    code, _, stderr = cli("run", "--out", str(tmp_path), "--model", "tiny-gpt2", "--quiet")
    assert code == 2
    assert "model: 'tiny-bert' (existing run) vs 'tiny-gpt2'" in stderr


def test_run_config_file_errors(cli, tmp_path):
    config = tmp_path / "c.json"
    config.write_text('{"learning_rate": 0.1, "epochs": 3}')
    code, _, stderr = cli("run", "--out", str(tmp_path / "o"), "--config", str(config))
    assert code == 2 and "unknown setting(s) epochs" in stderr
    code, _, stderr = cli(
        "run", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "none.json")
    )
    assert code == 2 and "config file not found" in stderr


def test_a_runs_config_json_is_a_config_file_its_format_checked_not_a_setting(tmp_path):
    from neuroplastic.config import RUN_FORMAT, ExperimentConfig
    from neuroplastic.errors import NeuroplasticError

    written = {"format": RUN_FORMAT, **ExperimentConfig(seed=3).to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(written))
    assert ExperimentConfig.load(tmp_path / "config.json") == ExperimentConfig(seed=3)
    for bad, says in ((RUN_FORMAT + 1, "upgrade neuroplastic"), ("1", "an integer >= 0")):
        (tmp_path / "config.json").write_text(json.dumps({**written, "format": bad}))
        with pytest.raises(NeuroplasticError, match=says):
            ExperimentConfig.load(tmp_path / "config.json")


def test_concept_without_tokens_in_the_split(cli, tmp_path):
    (tmp_path / "train.txt").write_text(CONLL)
    (tmp_path / "validation.txt").write_text("Ann B-PER\nsings O\n\nBob B-PER\nruns O\n")
    code, _, stderr = cli("rank", "--model", "tiny-gpt2", "--dataset", str(tmp_path), "--quiet")
    assert code == 2
    assert "concept 'LOC' has no tokens in the data; token counts per label: O=" in stderr
