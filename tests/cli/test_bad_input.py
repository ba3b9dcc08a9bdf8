"""Bad input is refused with one clear line before any compute (tracker issue 11)."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from tiny import TINY, tiny_config

from neuroplastic.cli.commands import main
from neuroplastic.data.conll import read_conll_file
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment import pipeline as experiment
from neuroplastic.experiment.pipeline import run_experiment

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def tiny_flags(**overrides):
    settings = {**TINY, **overrides}
    flags = []
    for name, value in settings.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


@pytest.fixture
def no_training(monkeypatch):
    """Reaching base fine-tuning fails the test: the checks must come before it."""

    def reached(*args, **kwargs):
        raise AssertionError("base fine-tuning reached")

    monkeypatch.setattr(experiment, "_fine_tune_base", reached)


# -- 1. values refused by the config ----------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("learning_rate", float("nan"), "learning_rate must be a finite number"),
        ("learning_rate", float("inf"), "learning_rate must be a finite number"),
        ("weight_decay", float("nan"), "weight_decay must be a finite number"),
        ("weight_decay", float("inf"), "weight_decay must be a finite number"),
        ("plateau_tolerance", float("nan"), "plateau_tolerance must be a number; got nan"),
        ("fraction", float("nan"), "fraction"),
        ("warmup_fraction", float("nan"), "warmup_fraction"),
        ("seed", -1, r"seed must be in \[0, 4294967295\]"),
        ("seed", 2**32, r"seed must be in \[0, 4294967295\]"),
        ("device", "gpu", "device must be one of cpu, cuda, cuda:N"),
        ("device", "cuda:", "device must be one of cpu, cuda, cuda:N"),
        ("device", "cuda:x", "device must be one of cpu, cuda, cuda:N"),
    ],
)
def test_config_refuses_bad_values(setting, value, message):
    with pytest.raises(NeuroplasticError, match=message):
        tiny_config(**{setting: value})


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_config_accepts_device_forms(device):
    assert tiny_config(device=device).device == device


def test_seed_bounds_are_accepted_and_one_past_them_refused():
    for seed in (0, 2**32 - 1):
        config = tiny_config(seed=seed)
        assert config.seed == seed and config.identity()["seed"] == seed
    for seed in (-1, 2**32):
        with pytest.raises(NeuroplasticError, match=r"seed must be in \[0, 4294967295\]"):
            tiny_config(seed=seed)


def test_refused_nan_lr_leaves_out_usable(cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("run", "--out", str(out), *tiny_flags(), "--lr", "nan", "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and "learning_rate must be a finite number; got nan" in err
    assert not (out / "config.json").exists()
    code, _, err = cli("run", "--out", str(out), *tiny_flags(), "--quiet")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["learning_rate"] == TINY["learning_rate"]
    assert (out / "summary.json").is_file()


# -- 2. checks before base fine-tuning ---------------------------------------------------------
def test_cuda_unavailable_refused(monkeypatch, tmp_path, no_training, cli):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = cli(
        "run", "--out", str(tmp_path / "r"), *tiny_flags(), "--device", "cuda", "--quiet"
    )
    assert code == 2
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err


@pytest.mark.parametrize(
    ("selection", "count", "message"),
    [
        ("count", 2 * 64 + 1, r"2 layers x 64 MLP neurons = 128 in all\); give --count 128"),
        ("per-layer", 65, r"64 MLP neurons per layer\); give --count 64"),
    ],
)
def test_count_larger_than_model_refused(tmp_path, no_training, selection, count, message):
    config = tiny_config(selection=selection, count=count)
    with pytest.raises(NeuroplasticError, match=message):
        run_experiment(config, tmp_path / "r", progress=False, log=lambda *a: None)


def test_count_that_fits_passes_the_check(tmp_path, no_training):
    # (no control: one of as many neurons outside all 128 cannot be drawn, and is refused)
    config = tiny_config(selection="count", count=128, baseline="none")
    with pytest.raises(AssertionError, match="base fine-tuning reached"):
        run_experiment(config, tmp_path / "r", progress=False, log=lambda *a: None)


def test_max_length_beyond_positions_refused(cli, tmp_path, no_training):
    code, _, err = cli("run", "--out", str(tmp_path / "r"), *tiny_flags(max_length=161), "--quiet")
    assert code == 2
    assert "--max-length 161 exceeds tiny-bert's 160 positions; give --max-length 160" in err


def test_out_is_a_file_refused(cli, tmp_path, no_training):
    path = tmp_path / "results.txt"
    path.write_text("not a directory")
    code, _, err = cli("run", "--out", str(path), *tiny_flags(), "--quiet")
    assert code == 2
    assert "is an existing file, not a directory" in err
    assert path.read_text() == "not a directory"


def test_a_run_and_a_sweep_refuse_each_others_directories(cli, tmp_path, no_training):
    sweep_dir, run_dir = tmp_path / "sweep", tmp_path / "run"
    (sweep_dir / "hold-selectivity" / "seed-0").mkdir(parents=True)
    (sweep_dir / "hold-selectivity" / "seed-0" / "config.json").write_text("{}")
    (sweep_dir / "sweep.json").write_text("{}")
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, _, err = cli("run", "--out", str(sweep_dir), *tiny_flags(), "--quiet")
    assert code == 2 and f"--out {sweep_dir} is a sweep directory" in err
    code, _, err = cli("sweep", "--out", str(run_dir), "--seeds", "0", *tiny_flags(), "--quiet")
    assert code == 2 and f"--out {run_dir} is a run directory" in err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing replaced


def test_out_in_read_only_directory_refused(cli, tmp_path, no_training):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        for out in (locked, locked / "run"):
            code, _, err = cli("run", "--out", str(out), *tiny_flags(), "--quiet")
            assert code == 2, err
            assert "you can write to" in err and err.count("\n") == 1
    finally:
        os.chmod(locked, 0o755)


def test_out_that_cannot_be_created_refused(cli, tmp_path, no_training):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = cli("run", "--out", str(blocker / "run"), *tiny_flags(), "--quiet")
    assert code == 2
    assert "cannot create the run directory" in err and "you can write to" in err


def test_out_not_writable_refused_even_as_root(monkeypatch, tmp_path, no_training):
    out = tmp_path / "r"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != out and real_access(p, mode))
    with pytest.raises(NeuroplasticError, match="the directory is not writable"):
        run_experiment(tiny_config(), out, progress=False, log=lambda *a: None)


# -- 3. CoNLL input -----------------------------------------------------------------------------
def test_conll_byte_order_mark_is_stripped(tmp_path):
    path = tmp_path / "bom.txt"
    text = "-DOCSTART- -X- -X- O\n\nParis NNP B-NP B-LOC\nis VBZ B-VP O\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    sentences = read_conll_file(path)
    assert len(sentences) == 1
    assert sentences[0].words == ("Paris", "is")


def test_conll_decoding_error_names_the_bad_line(tmp_path):
    path = tmp_path / "latin1.txt"
    lines = [f"w{i} O" for i in range(5000)] + ["Z\xfcrich B-LOC"]
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(NeuroplasticError, match=r"line 5001: not UTF-8 text.*0xfc at column 2"):
        read_conll_file(path)


def test_output_files_that_are_directories_are_refused_before_any_work(tmp_path, capsys):
    assert main(["rank", "--model", "tiny-bert", "--json", str(tmp_path)]) == 2
    assert f"--json {tmp_path} is a directory; give a file path" in capsys.readouterr().err
    args = ["view", "--model", "tiny-bert", "--neurons", "0:1", "--out", str(tmp_path)]
    assert main(args) == 2
    assert f"--out {tmp_path} is a directory" in capsys.readouterr().err


def test_output_files_something_else_wrote_are_never_overwritten(tmp_path, capsys):
    """A dataset, a run's summary, someone's notes: refused before any work, left as they
    were; a file the same command wrote before is replaced, as a rerun expects."""
    data = tmp_path / "data.txt"
    data.write_text("Paris B-LOC\nis O\n\nAnn B-PER\nlives O\nin O\nRome B-LOC\n" * 3)
    summary = tmp_path / "summary.json"
    summary.write_text('{"config": {}, "arms": {}}')
    notes = tmp_path / "notes.html"
    notes.write_text("<html><head><title>mine</title></head></html>")
    before = {path: path.read_bytes() for path in (data, summary, notes)}
    rank = ["rank", "--model", "tiny-bert", "--dataset", str(data), "--split", "train", "--quiet"]
    view = ["view", "--model", "tiny-bert", "--dataset", str(data), "--split", "train",
            "--neurons", "0:1", "--quiet"]  # fmt: skip
    for args in (
        [*rank, "--json", str(data)],
        [*rank, "--json", str(summary)],
        [*view, "--out", str(data)],
        [*view, "--out", str(notes)],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{args[-1]} exists and is not a" in err and "not overwritten" in err, err
    assert {path: path.read_bytes() for path in before} == before
    # Their own earlier output they replace.
    ranking, page = tmp_path / "rank.json", tmp_path / "view.html"
    for _ in range(2):
        assert main([*rank, "--json", str(ranking)]) == 0
        assert main([*view, "--out", str(page)]) == 0
    capsys.readouterr()
    assert json.loads(ranking.read_text())["neurons"]
    assert '<meta name="generator" content="neuroplastic view">' in page.read_text()


def test_a_non_utf8_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "config.json"
    data = b'{"seed": 1, "concept": "L\xd6C"}'
    config.write_bytes(data)
    assert main(["run", "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    assert f"not UTF-8 text (byte {data.index(0xD6)})" in capsys.readouterr().err


def test_neurons_with_non_ascii_digits_are_refused():
    from neuroplastic.core.neurons import NeuronSet

    for text in ("0:\u00b2", "\uff11:3"):  # superscript two, fullwidth one
        with pytest.raises(NeuroplasticError, match="write LAYER:NEURON"):
            NeuronSet.parse(text, 2, 64)


def test_a_corrupt_checkpoint_is_refused(tmp_path, capsys):
    broken = tmp_path / "base.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    args = ["run", "--out", str(tmp_path / "run"), "--checkpoint", str(broken)]
    for name, value in TINY.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    assert main(args) == 2
    assert "is not a readable safetensors checkpoint" in capsys.readouterr().err
    # The failed start left no run behind: the corrected command is not refused as another
    # run's directory (it was, with config.json and the data record written before the load).
    assert not (tmp_path / "run").exists()
    missing = ["run", "--out", str(tmp_path / "run"), "--checkpoint", str(tmp_path / "nope")]
    assert main(missing + args[5:]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_control_that_cannot_be_drawn_says_to_use_a_new_out(tmp_path, capsys):
    """Known only once the base is ranked, after which the run's settings are fixed: the
    advice to change --baseline must say where (its base kept for the record). At half of the
    model or less, as here (more is refused before any training), random-global can always be
    drawn, so the advice leads to a run that works."""
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *tiny_flags(fraction=0.5), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Use --baseline random-global" in err
    assert f"give the changed settings a new --out (those of {out} are fixed" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fraction", "0.1", "--count", "5"], r"--fraction 0.1 and --count 5 both say"),
        (["--batch-size", "10000"], r"--batch-size 10000 exceeds the \d+ training sentences"),
    ],
)
def test_settings_that_would_be_silently_bent_are_refused(tmp_path, capsys, flags, message):
    args = ["run", "--out", str(tmp_path / "run"), *tiny_flags(), *flags, "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["rank", "view"])
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "gpu0"])
def test_rank_and_view_refuse_a_device_they_cannot_use(tmp_path, capsys, command, device):
    """They used to run on the CPU without a word (TransformerLens falls back)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: cuda is usable here")
    extra = ["--neurons", "0:1", "--out", str(tmp_path / "v.html")] if command == "view" else []
    assert main([command, "--model", "tiny-bert", "--device", device, *extra, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--device {device}" in err or f"got {device!r}" in err
    assert not (tmp_path / "v.html").exists()


def test_a_model_that_cannot_be_loaded_is_one_line(capsys):
    assert main(["rank", "--model", "no-such-org/no-such-model", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuroplastic rank: error: could not load model 'no-such-org/no-such-")
    assert err.count("\n") == 1


def test_a_file_system_error_while_writing_the_report_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from neuroplastic.report import html

    args = ["run", "--out", str(tmp_path)]
    for name, value in {**TINY, "stages": 1, "baseline": "none"}.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    assert main([*args, "--quiet", "--no-report"]) == 0
    capsys.readouterr()

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device", "report.html")

    monkeypatch.setattr(html.os, "replace", full)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot write {tmp_path / 'report.html'}: No space left on device; free some" in err
    assert (tmp_path / "summary.json").is_file()


def test_report_on_a_sweep_directory_rebuilds_the_sweep_report(capsys, tmp_path):
    committed = BENCHMARKS / "sweep-preempt-5seeds-cpu.json"
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_bytes(committed.read_bytes())
    assert main(["report", str(sweep_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {sweep_dir / 'report.html'}"
    page = (sweep_dir / "report.html").read_text(encoding="utf-8")
    assert "<title>Does LOC stay removed? embedded, seeds [0, 1, 2, 3, 4]</title>" in page


@pytest.mark.parametrize(
    "content, says",
    [
        (b'{"config": {"concept": "LO', "is corrupt or truncated"),
        (b"", "is corrupt or truncated"),
        (b"\xff\xfe", "is corrupt or truncated"),
        (b"[]", "is not a sweep's summary (no config, seeds"),
        (b'{"config": {}}', "is not a sweep's summary (no seeds, modes"),
    ],
)
def test_report_on_a_damaged_sweep_json_says_how_to_rewrite_it(capsys, tmp_path, content, says):
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "hold-selectivity" / "seed-0").mkdir(parents=True)
    (sweep_dir / "hold-selectivity" / "seed-0" / "config.json").write_text("{}")
    (sweep_dir / "sweep.json").write_bytes(content)
    assert main(["report", str(sweep_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert f"rerun the `neuroplastic sweep --out {sweep_dir} --seeds ...` command" in err
    assert (sweep_dir / "sweep.json").read_bytes() == content  # left for the rerun to rewrite
    (sweep_dir / "sweep.json").unlink()
    assert main(["report", str(sweep_dir)]) == 2
    err = capsys.readouterr().err
    assert "not found: the sweep has not aggregated its runs" in err and "--only-finished" in err


def test_every_bound_is_declared_once_and_checked_at_its_edges():
    """Each numeric setting's bound is its field's metadata: a value just inside it is
    accepted, one just outside refused with the bound in words, and the command line's
    positive-integer flags are exactly the integer settings whose bound leaves out 0."""
    from dataclasses import fields

    from neuroplastic.config import Bound, ExperimentConfig

    declared = {f.name: f for f in fields(ExperimentConfig) if f.metadata.get("bound")}
    assert {"fraction", "seed", "learning_rate", "relearn_lr", "stop_below"} <= set(declared)
    for name, field in declared.items():
        bound: Bound = field.metadata["bound"]
        integer = isinstance(field.default, int)
        assert field.metadata["zero_allowed"] == bound.admits(0)
        if bound.low is not None:
            step = 1 if integer else 1e-9
            edge = bound.low + step if bound.low_open else bound.low
            outside = bound.low if bound.low_open else bound.low - step
            assert bound.admits(edge) and not bound.admits(outside), name
            with pytest.raises(NeuroplasticError, match=f"^{name} must be "):
                ExperimentConfig(**{name: type(field.default)(outside)})
    assert Bound(low=0, high=1, low_open=True).describe() == "in (0, 1]"
    assert Bound(low=0, low_open=True).describe() == "positive"
    assert Bound(low=0, note="0: none").admits(0) and not Bound(low=0).admits(float("nan"))


def test_a_concept_cut_off_by_max_length_says_so(tmp_path):
    """Every LOC word lies past the first tokens: not "no tokens in the data" alone, but where
    they went and what to raise."""
    data = tmp_path / "data"
    data.mkdir()
    filler = "".join(f"word{i} O\n" for i in range(30))
    text = "\n".join(f"{filler}Paris B-LOC\nis{i} O\n" for i in range(150))
    (data / "train.txt").write_text(text)
    (data / "validation.txt").write_text(text)
    config = tiny_config(dataset=str(data), max_length=16)
    with pytest.raises(
        NeuroplasticError,
        match=r"no tokens in the validation sentences within "
        r"their first 16 tokens \(\d+ of them are longer.*raise --max-length",
    ):
        run_experiment(config, tmp_path / "run", log=lambda *_: None)


def test_a_directory_given_for_a_file_is_named_as_one(tmp_path, capsys):
    args = ["run", "--out", str(tmp_path / "run"), *tiny_flags(), "--quiet"]
    assert main([*args, "--config", str(tmp_path)]) == 2
    assert f"--config {tmp_path} is a directory; give its config.json" in capsys.readouterr().err
    assert main([*args, "--checkpoint", str(tmp_path)]) == 2
    assert f"checkpoint {tmp_path} is a directory" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# -- issue 40: comma lists, spellings, sizes, dashes, paths ---------------------------------------
@pytest.fixture
def no_sweep(monkeypatch):
    """A sweep that would start running fails the test: every refusal comes first."""
    import neuroplastic.experiment.sweep as sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("the sweep started"))


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--grid", "relearn_lr=1e-4,,1e-3"], "'relearn_lr=1e-4,,1e-3': value 2 of 3 is empty"),
        (["--grid", "relearn_lr=1e-4,"], "'relearn_lr=1e-4,': value 2 of 2 is empty"),
        (["--seeds", "0,,1"], "'0,,1': value 2 of 3 is empty"),
        (["--method", "probeless,,smd"], "'probeless,,smd': value 2 of 3 is empty"),
        (["--method", "probeless,probeless"], "'probeless,probeless': probeless is given twice"),
        (["--mode", "hold,hold"], "'hold,hold': hold is given twice"),
    ],
)
def test_a_sweep_list_with_an_empty_or_repeated_value_is_refused(
    tmp_path, cli, no_sweep, flags, says
):
    """A value dropped (``a,,b``) or repeated changes how many cells run: refused, never bent."""
    args = ["sweep", "--out", tmp_path / "s", "--quiet", *flags]
    if "--seeds" not in flags:
        args += ["--seeds", "0"]
    code, _, stderr = cli(*args)
    assert code == 2 and stderr.count("\n") == 1
    assert says in stderr and "--grid values" not in stderr
    assert not (tmp_path / "s").exists()


def test_a_repeated_method_is_refused_by_name_in_the_api():
    from neuroplastic.config import ExperimentConfig
    from neuroplastic.experiment.sweep_plan import plan_sweep

    with pytest.raises(NeuroplasticError) as refused:
        plan_sweep(ExperimentConfig(), [0], methods=["probeless", "probeless"])
    assert str(refused.value) == (
        "--method probeless is given twice; give each value once (one cell each)"
    )


def test_removal_layers_are_one_setting_however_spelled():
    from neuroplastic.config import ExperimentConfig
    from neuroplastic.experiment.sweep_plan import plan_sweep

    one = ExperimentConfig(removal="leace", removal_layers="0")
    for spelling in ("0,0", "0+0", " 0 "):
        same = ExperimentConfig(removal="leace", removal_layers=spelling)
        assert same.removal_layers == "0" and same.to_dict() == one.to_dict()
        assert same.identity_hash() == one.identity_hash() and not same.differences(one)
    assert ExperimentConfig(removal="leace", removal_layers="2+0,2").removal_layers == "0,2"
    # a grid writes a value of several layers with +; one set spelled twice is refused
    base = ExperimentConfig(removal="leace")
    plan = plan_sweep(base, [0], grid={"removal_layers": ["0+1", "1"]})
    assert [config.removal_layers for _, _, config in plan.runs] == ["0,1", "1"]
    with pytest.raises(NeuroplasticError, match="are the same run"):
        plan_sweep(base, [0], grid={"removal_layers": ["0+1", "1+0"]})


def test_a_sweep_says_how_many_runs_it_makes_and_asks_for_more_than_max_runs(
    tmp_path, cli, monkeypatch
):
    import neuroplastic.experiment.sweep as sweep

    class Started(Exception):
        pass

    def started(*_a, **_k):
        raise Started

    monkeypatch.setattr(sweep, "run_sweep", started)
    out = tmp_path / "s"
    values = ",".join(str(k) for k in range(1, 52))  # 51 cells x 2 seeds
    args = ["sweep", "--out", out, "--seeds", "0,1", "--grid", f"top_k_tokens={values}"]
    code, _, stderr = cli(*args, "--no-report")
    assert (code, stderr) == (
        2,
        "neuroplastic sweep: error: this sweep makes 102 runs (51 cells x 2 seeds), more than "
        "--max-runs 100; give --max-runs 102 to run them all, or fewer --grid values or seeds\n",
    )
    with pytest.raises(Started):
        cli(*args, "--no-report", "--max-runs", "102")
    assert f"sweep: 102 runs (51 cells x 2 seeds) into {out}\n" == cli_err(cli)
    with pytest.raises(Started):
        cli("sweep", "--out", out, "--seeds", "0", "--no-report")
    assert cli_err(cli) == f"sweep: 1 run (1 cell x 1 seed) into {out}\n"


def cli_err(cli):
    """What the last ``cli`` call (one that raised) printed on stderr."""
    return cli("--never-a-flag")[2].split("neuroplastic: error:")[0]


@pytest.mark.parametrize("form", [["--neurons", "-1:3"], ["--neurons=-1:3"]])
def test_a_neuron_with_a_leading_dash_reaches_the_neuron_check_in_either_form(tmp_path, cli, form):
    code, _, stderr = cli(
        "view", "--model", "tiny-bert", "--out", tmp_path / "v.html", "--quiet", *form
    )
    assert (code, stderr) == (
        2,
        "neuroplastic view: error: cannot read neuron '-1:3': write LAYER:NEURON, e.g. 3:17,5:2\n",
    )


def test_a_dash_value_is_joined_to_its_flag_and_nothing_else_is():
    from neuroplastic.cli.commands import _attach_dash_values

    assert _attach_dash_values(["--neurons", "-1:3", "--lr", "-.5", "--quiet"]) == [
        "--neurons=-1:3",
        "--lr=-.5",
        "--quiet",
    ]
    kept = ["--out", "x", "-h", "--", "-1", "--seeds=-1"]
    assert _attach_dash_values(kept) == kept


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda p: None, "does not exist; give the directory of a run"),
        (lambda p: p.write_text("x"), "is a file, not a run directory"),
        (lambda p: p.mkdir(), "is not a run directory (no config.json)"),
    ],
)
def test_report_says_what_its_path_is(tmp_path, cli, make, says):
    path = tmp_path / "r"
    make(path)
    code, _, stderr = cli("report", path)
    assert code == 2 and stderr.startswith(f"neuroplastic report: error: {path} {says}")


def test_an_old_model_alias_offline_is_one_line(cli):
    """TransformerLens logs a 4-line notice for an old alias before the load fails offline."""
    code, _, stderr = cli("rank", "--model", "gpt2-small", "--quiet")
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith(
        "neuroplastic rank: error: could not load model 'gpt2-small' ('gpt2-small' is an old "
        "alias of 'gpt2'): "
    )
