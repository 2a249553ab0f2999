"""benchmarks/bench_group.py: the CI-sized run prints both tables, ratios are group / sum of its singles, and
--write replaces only its own section of RESULTS.md."""
import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_group.py")


def load_bench_group():
    spec = importlib.util.spec_from_file_location("bench_group", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_group_quick_prints_the_tables():
    done = subprocess.run([sys.executable, SCRIPT, "--quick", "--device", "cpu"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| run | wall s for 2 steps (median) | min-max s | ms/step | CPU s (median) |" in out, out
    for row in ("| teacher forward only (KD's need) |", "| single: kd |", "| single: crd |",
                "| group of 2: kd, crd |"):
        assert row in out, out
    assert "| N | group s (median) | sum of its single runs s (median) | group / sum (median) |" in out, out
    ratio_rows = [line for line in out.splitlines() if line.startswith("| 2 |")]
    assert len(ratio_rows) == 1 and ratio_rows[0].count("|") == 10, out
    assert "Teacher share of a KD step:" in out, out


def test_ratio_is_group_over_sum_of_its_singles_per_repeat():
    bench = load_bench_group()
    args = SimpleNamespace(methods=["kd", "crd", "dkd"], groups=[2, 3], repeats=2, device="cpu", quick=False)
    times = {"teacher": [1.0, 1.0], "kd": [2.0, 4.0], "crd": [3.0, 4.0], "dkd": [5.0, 2.0],
             "group of 2": [2.5, 4.0], "group of 3": [4.0, 5.0]}
    two, three = bench.group_rows(args, times, cpu_times={**times, "group of 2": [4.0, 4.0]})
    assert two["ratio"] == (2.5 / 5 + 4.0 / 8) / 2 and (two["ratio_min"], two["ratio_max"]) == (0.5, 0.5)
    assert two["singles"] == (5 + 8) / 2 and two["group"] == (2.5 + 4.0) / 2
    assert two["cpu_ratio"] == (4 / 5 + 4 / 8) / 2
    assert two["ideal"] == ((5 - 1) / 5 + (8 - 1) / 8) / 2
    assert three["ratio"] == (4 / 10 + 5 / 10) / 2 and three["target"] is None and three["verdict"] == "-"
    args.groups = [2, 4]
    args.methods.append("attention")
    times.update({"attention": [1.0, 1.0], "group of 4": [7.0, 5.0]})
    four = bench.group_rows(args, times)[1]
    assert four["target"] == 0.6 and four["ratio"] == (7 / 11 + 5 / 11) / 2 and four["verdict"] == "pass"
    times["group of 4"] = [7.0, 7.0]
    assert bench.group_rows(args, times)[1]["verdict"] == "miss"


def test_write_replaces_only_its_own_section(tmp_path):
    bench = load_bench_group()
    results = tmp_path / "RESULTS.md"
    results.write_text("# head\n\n<!-- bench_kd:cpu -->\nkd figures\n<!-- /bench_kd:cpu -->\n")
    for figures in ("first", "second"):
        bench.write_section(["<!-- bench_group:cpu -->", figures, "<!-- /bench_group:cpu -->"], "cpu",
                            path=str(results))
    text = results.read_text()
    assert text.count("<!-- bench_group:cpu -->") == 1 and "second" in text and "first" not in text
    assert "<!-- bench_kd:cpu -->\nkd figures\n<!-- /bench_kd:cpu -->" in text
