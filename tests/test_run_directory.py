import os

import pytest

from keras_interbert.utils.run_directory import fresh_run_directory

# tf.data, numpy and files only: the same under every KERAS_BACKEND
# (conftest.py).
pytestmark = pytest.mark.once


def test_a_new_directory_is_created_and_marked(tmp_path):
    run = tmp_path / "a" / "run"
    fresh_run_directory(str(run), "quickstart")
    assert os.listdir(run) == [".keras_interbert_quickstart"]


def test_an_owned_directory_is_emptied(tmp_path):
    run = tmp_path / "run"
    fresh_run_directory(str(run), "ablation")
    (run / "pretrain").mkdir()
    (run / "pretrain" / "backup.keras").write_text("an earlier run")
    fresh_run_directory(str(run), "ablation")
    assert os.listdir(run) == [".keras_interbert_ablation"]


@pytest.mark.parametrize("owner", ["quickstart", "ablation"])
def test_a_foreign_directory_is_refused_and_kept(tmp_path, owner):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.txt").write_text("somebody's results")
    if owner == "ablation":  # another program's mark is not this one's
        (run / ".keras_interbert_quickstart").write_text("")
    with pytest.raises(SystemExit, match=f"not written by the {owner}"):
        fresh_run_directory(str(run), owner)
    assert (run / "results.txt").read_text() == "somebody's results"


def test_an_empty_foreign_directory_is_used(tmp_path):
    fresh_run_directory(str(tmp_path), "quickstart")
    assert os.listdir(tmp_path) == [".keras_interbert_quickstart"]


def test_a_file_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("a file")
    with pytest.raises(SystemExit, match="is not a directory"):
        fresh_run_directory(str(path), "quickstart")
    assert path.read_text() == "a file"
