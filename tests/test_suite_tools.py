"""Tools that measure the suite's costs: benchmarks/suite_cpu_report.py
(the summary of `make test TEST_CPU=1`) and the report of
benchmarks/retrieval_learning_costs.py (whose runs
tests/test_retrieval_learning.py makes)."""
import json
import os
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import retrieval_learning_costs  # noqa: E402
import suite_cpu_report  # noqa: E402

pytestmark = pytest.mark.once


def test_sums_own_and_started_processes_per_file(tmp_path, capsys):
    rows = tmp_path / "jax.cpu.tsv"
    rows.write_text("1.5\t2.0\t3.5\ttests/test_a.py::one\n"
                    "0.5\t0.0\t1.0\ttests/test_b.py::two[x]\n"
                    "4.0\t0.0\t6.0\ttests/test_b.py::three\n")
    assert suite_cpu_report.main([str(rows), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "== jax: 3 tests, 8 CPU s (2 in started processes)" in out
    files = out.split("  files:\n")[1].split("  tests (")[0].split("\n")
    assert files[0].split() == ["4.5", "tests/test_b.py"]
    assert files[1].split() == ["3.5", "tests/test_a.py"]
    assert "test_b.py::two[x]" not in out  # beyond --top 2
    assert "all sessions: 8 CPU s; on two cores at least 4 s" in out


def test_a_damaged_row_names_the_file_and_line(tmp_path):
    rows = tmp_path / "torch.cpu.tsv"
    rows.write_text("1.0\t0.0\t1.0\ttests/test_a.py::one\n1.0\tx\t1.0\tt\n")
    with pytest.raises(SystemExit, match=r"torch.cpu.tsv:2: expected four"):
        suite_cpu_report.main([str(rows)])
    with pytest.raises(SystemExit, match="No such file"):
        suite_cpu_report.main([str(tmp_path / "missing.tsv")])


def test_retrieval_learning_costs_reports_r1_and_cpu(tmp_path, monkeypatch,
                                                     capsys):
    def r1(value):  # a rank summary after a JSON round trip
        return {"text_to_image": {"recall": {"1": value, "5": 99.0}}}

    calls = []

    def fake_run(out, **settings):
        calls.append((out, settings))
        return {"itm_accuracy": 0.76612, "cpu_seconds": {"pretraining": 1.0},
                "zero_shot": {"random_baseline": r1(1.0),
                              "modes": {"full": r1(17.94)}},
                "finetuned": {"modes": {"full": r1(52.97),
                                        "two_stage": r1(52.68)}},
                "dual_encoder": {"metrics": r1(49.11)}}

    monkeypatch.setattr(retrieval_learning_costs, "run", fake_run)
    out = str(tmp_path / "new")
    assert retrieval_learning_costs.main(
        ["--out", out, "--seed", "43", "--pretrain-batch-size", "64"]) == 0
    assert calls == [(out, {"seed": 43, "pretrain_steps": 300,
                            "pretrain_batch_size": 64,
                            "pretrain_steps_per_epoch": 100,
                            "finetune_epochs": 6, "finetune_batch_size": 32,
                            "baseline_steps": 600})]
    report = json.loads(capsys.readouterr().out)
    assert report["itm_accuracy"] == 0.766
    assert report["t2i_r1"] == {"random": 1.0, "zero_shot": 17.9,
                                "finetuned": 53.0, "two_stage": 52.7,
                                "dual_encoder": 49.1}
    with pytest.raises(SystemExit):
        retrieval_learning_costs.main(["--out", str(tmp_path)])
