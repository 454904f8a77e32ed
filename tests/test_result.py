"""hf_ifbeta.result: a `PruningResult` saved, loaded from a folder, and refused where it is no folder
(the round trip of a real selection is in test_reliability.py, sharing in test_hub.py)."""

import numpy as np
import pytest

from hf_ifbeta.pruner import RESULT_FILE as PRUNER_RESULT_FILE
from hf_ifbeta.pruner import PruningResult as PrunerPruningResult
from hf_ifbeta.result import RESULT_FILE, PruningResult, load_pruning_result


def tiny_result():
    rng = np.random.default_rng(0)
    return PruningResult(
        method="random", scores=rng.normal(size=10), labels=np.arange(10) % 2, config={"seed": 0},
        provenance={"teacher": "tiny"}, val_indices=np.array([0, 1]), ratio=0.5, seed=0,
        indices=np.array([2, 3, 5, 7, 8]), policy={"history": np.arange(3)},
    )  # fmt: skip


def test_pruner_names_are_the_result_modules():
    assert PrunerPruningResult is PruningResult and PRUNER_RESULT_FILE == RESULT_FILE == "pruning_result.json"


def test_a_saved_result_loads_from_its_folder(tmp_path):
    result = tiny_result()
    result.save(tmp_path / "r")
    assert (tmp_path / "r" / RESULT_FILE).exists()
    loaded = load_pruning_result(tmp_path / "r")
    assert np.array_equal(loaded.scores, result.scores) and np.array_equal(loaded.indices, result.indices)
    assert loaded.policy == {"history": [0, 1, 2]} and loaded.provenance == {"teacher": "tiny"}
    with pytest.raises(NotADirectoryError, match=rf"is a file: pass the folder that holds {RESULT_FILE}"):
        load_pruning_result(tmp_path / "r" / RESULT_FILE)
    with pytest.raises(FileNotFoundError, match="not a saved PruningResult"):
        PruningResult.load(tmp_path)


def test_saving_over_a_folder_leaves_nothing_of_the_result_saved_there_before(tmp_path):
    selected = tiny_result()
    selected.extra_scores = {"self_influence": np.ones(10)}
    selected.save(tmp_path)
    unselected = tiny_result()
    unselected.indices, unselected.ratio = None, None
    unselected.save(tmp_path)
    loaded = PruningResult.load(tmp_path)
    assert loaded.indices is None and loaded.ratio is None and loaded.extra_scores == {}
    assert not (tmp_path / "indices.npy").exists() and not (tmp_path / "scores_self_influence.npy").exists()


@pytest.mark.parametrize(
    "name, values, message",
    [
        ("scores", np.zeros(7), r"scores.npy holds shape \(7,\), but pruning_result.json records 10 rows"),
        ("labels", np.zeros((10, 2)), r"labels.npy holds shape \(10, 2\)"),
        ("indices", np.array([2, 3, 5]), r"indices.npy holds shape \(3,\), but pruning_result.json records 5 rows"),
        ("indices", np.array([2, 3, 5, 7, 10]), r"indices.npy holds row indices outside \[0, 10\)"),
        ("val_indices", np.array([-1, 1]), r"val_indices.npy holds row indices outside \[0, 10\)"),
    ],
)
def test_a_damaged_saved_result_is_refused_naming_the_file(tmp_path, name, values, message):
    tiny_result().save(tmp_path)
    np.save(tmp_path / f"{name}.npy", values)
    with pytest.raises(ValueError, match=message):
        PruningResult.load(tmp_path)
