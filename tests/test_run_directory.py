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


# claim_output_directory: the evaluation's guard (its files check themselves).

OWN = ["retrieval_metrics.json", "scores_full.npz"]


def test_an_output_directory_is_marked_and_then_reused_as_it_is(tmp_path):
    from keras_interbert.utils.run_directory import claim_output_directory

    out = tmp_path / "eval"
    claim_output_directory(str(out), "evaluation", OWN)
    assert os.listdir(out) == [".keras_interbert_evaluation"]
    (out / "scores_full.npz").write_text("scores")
    (out / "notes.txt").write_text("a user's note in an owned folder")
    claim_output_directory(str(out), "evaluation", OWN)
    assert (out / "scores_full.npz").read_text() == "scores"
    assert (out / "notes.txt").exists()


def test_an_unmarked_folder_of_the_programs_own_files_is_adopted(tmp_path):
    from keras_interbert.utils.run_directory import claim_output_directory

    (tmp_path / "retrieval_metrics.json").write_text("{}")
    claim_output_directory(str(tmp_path), "evaluation", OWN)
    assert sorted(os.listdir(tmp_path)) == [".keras_interbert_evaluation",
                                            "retrieval_metrics.json"]


def test_an_output_directory_holding_other_files_is_refused(tmp_path):
    from keras_interbert.utils.run_directory import claim_output_directory

    (tmp_path / "retrieval_metrics.json").write_text("{}")
    (tmp_path / "pretrained.keras").write_text("somebody's model")
    with pytest.raises(SystemExit, match="not written by the evaluation"):
        claim_output_directory(str(tmp_path), "evaluation", OWN)
    assert sorted(os.listdir(tmp_path)) == ["pretrained.keras",
                                            "retrieval_metrics.json"]
