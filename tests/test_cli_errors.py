"""Bad input on the command line: one line naming the problem, no traceback.

Every recipe and `python -m` command runs through
`keras_interbert.utils.cli.run_main` (exit status 2 for refused input).
"""
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.once


def _run(args, tmp_path, env=None):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True,
        cwd=str(tmp_path), timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {})))


def test_a_missing_model_is_one_line(tmp_path):
    (tmp_path / "captions.jsonl").write_text("")
    result = _run([os.path.join(REPO_ROOT, "recipes", "evaluate_retrieval.py"),
                   "--model", "missing.keras", "--regions",
                   str(tmp_path), "--captions",
                   str(tmp_path / "captions.jsonl"), "--out",
                   str(tmp_path / "out")], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "evaluate_retrieval.py: error: missing.keras: no such file." \
        in result.stderr


def test_a_damaged_input_of_a_module_command_is_one_line(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    result = _run(["-m", "keras_interbert.export", "model.keras", "--name",
                   "m", "--output-dir", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "not a .keras archive" in result.stderr
    # The traceback is one variable away. (Started on TensorFlow: under
    # another backend the command would restart itself there, the route the
    # first run took.)
    shown = _run(["-m", "keras_interbert.export", "model.keras", "--name",
                  "m", "--output-dir", str(tmp_path / "out")], tmp_path,
                 env={"INTERBERT_TRACEBACK": "1",
                      "KERAS_BACKEND": "tensorflow"})
    assert "Traceback" in shown.stderr


def test_run_main_keeps_bugs_loud():
    from keras_interbert.utils.cli import run_main

    def broken():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        run_main(broken)
    assert run_main(lambda: True) == 0 and run_main(lambda: False) == 1
    assert run_main(lambda: None) == 0 and run_main(lambda: 3) == 3


def test_run_eagerly_and_xla_exclude_each_other(capsys):
    """`--run-eagerly` turns tracing and XLA off; with `--jit-compile true`
    the command line is refused before anything runs."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))
    try:
        import finetune_retrieval
        import finetune_text
        import finetune_vcr
        import pretrain
    finally:
        sys.path.pop(0)
    from keras_interbert.utils.cli import step_options

    required = {
        pretrain: ["--out", "o", "--data", "d"],
        finetune_retrieval: ["--out", "o", "--init", "m", "--data", "d"],
        finetune_text: ["--out", "o", "--init", "m", "--task-dir", "t"],
        finetune_vcr: ["--out", "o", "--init", "m", "--data", "d"],
    }
    for module, argv in required.items():
        assert step_options(module.parse_args(argv)) == {
            "run_eagerly": False, "jit_compile": "auto"}
        assert step_options(module.parse_args(argv + ["--run-eagerly"])) == {
            "run_eagerly": True, "jit_compile": False}
        # Not a defining argument: a run may be resumed either way.
        assert "run_eagerly" in module.NOT_DEFINING
    for module in (pretrain, finetune_retrieval):
        with pytest.raises(SystemExit):
            module.parse_args(required[module] + ["--run-eagerly",
                                                  "--jit-compile", "true"])
        assert ("--run-eagerly and --jit-compile true exclude each other"
                in capsys.readouterr().err)
        assert step_options(module.parse_args(
            required[module] + ["--jit-compile", "false"]))[
                "jit_compile"] is False
