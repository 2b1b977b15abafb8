"""benchmarks/suite_cpu_report.py: the summary of `make test TEST_CPU=1`."""
import os
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
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
