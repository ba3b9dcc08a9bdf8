import subprocess
import sys
from pathlib import Path

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def run_demo(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(DEMOS / name), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_ablation_demo_zeroes_the_neuron_and_leaves_no_hook():
    out = run_demo(
        "ablate_location_neurons.py", "--model", "tiny-gpt2", "--sentences", "24", "--top", "5"
    )
    assert "top 5 LOC neurons by probeless" in out
    assert "-> 0.000 when ablated" in out
    assert "hooks left on the model: 0" in out


def test_benchmark_prints_ratios():
    out = run_demo("benchmark.py", "--model", "tiny-gpt2", "--sentences", "24")
    lines = [line for line in out.splitlines() if line[:2] in ("1.", "2.")]
    assert len(lines) == 2 and all("x" in line for line in lines)
