"""benchmarks/proxy_vs_students.py: outer-objective variants on hand-made teacher outputs, and the summary."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "proxy_vs_students", Path(__file__).resolve().parents[1] / "benchmarks" / "proxy_vs_students.py"
)
pvs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pvs)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    n, d, c = 3000, 24, 3
    labels = np.arange(n) % c
    features = rng.standard_normal((n, d)).astype(np.float32) + 2.0 * np.eye(c, d, dtype=np.float32)[labels]
    logits = features @ rng.standard_normal((d, c)).astype(np.float32)
    val = np.sort(rng.choice(n, 300, replace=False))
    return {"features": features, "logits": logits, "labels": labels, "val_indices": val}


def test_outer_objective_trains_only_on_kept_rows_outside_v(inputs):
    obj = pvs.OuterObjective(inputs, "default", ratio=0.5, epochs=2)
    train = np.setdiff1d(np.arange(3000), inputs["val_indices"])
    kept = train[::2]
    with_v = np.sort(np.concatenate([kept, inputs["val_indices"][:50]]))
    assert obj(with_v) == pytest.approx(obj(kept))  # rows of V never train the proxy
    assert obj(kept) != pytest.approx(obj(train[1::2]))  # a different subset gives a different loss


def test_variants_weaken_the_proxy_as_documented(inputs):
    weak = pvs.OuterObjective(inputs, "weak16", ratio=0.5, epochs=2)
    assert weak.objective.x.shape[1] == 16 + 1  # 16 projected features + the bias column
    scarce = pvs.OuterObjective(inputs, "scarce1500", ratio=0.5, epochs=2)
    assert (scarce.position >= 0).sum() == 1500
    assert not np.isin(np.flatnonzero(scarce.position >= 0), inputs["val_indices"]).any()
    with pytest.raises(ValueError, match="Unknown variant"):
        pvs.OuterObjective(inputs, "oracle", ratio=0.5, epochs=2)


def test_summarise_ranks_lower_loss_as_better_per_variant():
    cells = []
    for seed in (0, 1):
        for method, loss, acc in (("random", 3.0, 80.0), ("if-beta", 1.0, 82.0), ("influence", 2.0, 81.0)):
            cells.append({"method": method, "ratio": 0.5, "seed": seed, "test_top1": acc + 0.1 * seed,
                          "proxy_loss": {"default": loss, "weak16": -loss}})
    (default,) = pvs.summarise(cells, "default")
    assert default["spearman_methods"] == pytest.approx(1.0) and default["cells"] == 6
    assert default["method_means"]["if-beta"] == {"proxy_loss": 1.0, "test_top1": pytest.approx(82.05)}
    (weak,) = pvs.summarise(cells, "weak16")
    assert weak["spearman_methods"] == pytest.approx(-1.0)
