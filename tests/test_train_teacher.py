"""scripts/train_teacher.py on a tiny synthetic parquet: decoding, a killed-and-resumed run, the outputs."""

import importlib.util
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_ifbeta.models import load_model

spec = importlib.util.spec_from_file_location(
    "train_teacher", Path(__file__).resolve().parents[1] / "scripts" / "train_teacher.py"
)
train_teacher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_teacher)

NAMES = ["n01", "n02", "n03"]


def write_parquet(path: Path, n: int, seed: int):
    """`n` 64x64 JPEGs (every fourth greyscale) coloured by label, in build_tiny_imagenet's columns."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(NAMES), n).tolist()
    images = []
    for i, y in enumerate(labels):
        pixels = np.clip(rng.normal(60 + 60 * y, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if i % 4 == 3:
            image = image.convert("L")
        buf = io.BytesIO()
        image.save(buf, format="JPEG")
        images.append({"bytes": buf.getvalue(), "path": f"img_{i}.JPEG"})
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    datasets.Dataset.from_dict({"img": images, "label": labels}, features=features).to_parquet(str(path))


@pytest.fixture
def data(tmp_path):
    write_parquet(tmp_path / "train.parquet", 10, seed=0)
    write_parquet(tmp_path / "test.parquet", 6, seed=1)
    return tmp_path


def arguments(data: Path, name: str, **run):
    recipe = train_teacher.TeacherRecipe(model="cifar10_resnet20", epochs=2, batch_size=4)
    return recipe, train_teacher.RunArguments(
        train_file=str(data / "train.parquet"), test_file=str(data / "test.parquet"), run_dir=str(data / name / "run"),
        output_model=str(data / name / "model.pt"), output_results=str(data / name / "record.json"),
        threads=1, save_steps=0, **run,
    )


def test_decoding_resizes_to_32_like_the_teacher_pass(data):
    decoded = train_teacher.load_split(data / "train.parquet")
    assert decoded["x"].shape == (10, 3, 32, 32) and decoded["x"].dtype == np.uint8
    assert decoded["names"] == NAMES
    ds = datasets.load_dataset("parquet", data_files={"train": str(data / "train.parquet")})["train"]
    assert decoded["y"].tolist() == ds["label"]
    for i in (0, 3):  # RGB, then greyscale
        pil = np.asarray(ds[i]["img"].convert("RGB").resize((32, 32), Image.BILINEAR), dtype=float)
        assert np.abs(decoded["x"][i].transpose(1, 2, 0) - pil).mean() < 2  # PIL's antialiased bilinear


def test_killed_run_resumes_to_the_same_weights(data, one_torch_thread):
    recipe, run = arguments(data, "whole")
    record = train_teacher.train(recipe, run, log=lambda s: None)

    recipe, run = arguments(data, "killed", max_steps=4)  # stops mid-epoch 2 (3 steps per epoch)
    assert train_teacher.train(recipe, run, log=lambda s: None) is None
    assert not Path(run.output_model).exists() and not Path(run.output_results).exists()
    messages = []
    recipe, run = arguments(data, "killed")
    resumed = train_teacher.train(recipe, run, log=messages.append)
    assert any(m.startswith("resumed") and "epoch 2, step 1/3" in m for m in messages)

    whole = torch.load(data / "whole" / "model.pt", weights_only=True)["state_dict"]
    again = torch.load(data / "killed" / "model.pt", weights_only=True)["state_dict"]
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    assert {v.dtype for v in whole.values() if v.is_floating_point()} == {torch.float16}  # half the size on disk
    for key in ("train_loss", "test_top1", "lr_end"):
        assert [e[key] for e in record["epochs"]] == [e[key] for e in resumed["epochs"]]
    assert resumed["sessions"] == 2 and record["sessions"] == 1

    saved = json.loads(Path(run.output_results).read_text())
    assert saved["num_classes"] == 3 and len(saved["epochs"]) == 2 and saved["recipe"]["lr"] == 0.1
    model = load_model("cifar10_resnet20", checkpoint=run.output_model).eval()
    assert model.num_classes == 3 and next(model.parameters()).dtype == torch.float32
    test = train_teacher.load_split(Path(run.test_file))
    assert train_teacher.evaluate(model, test, "fp32") == saved["test_top1_fp32"]


def test_resume_refuses_another_recipe(data, one_torch_thread):
    recipe, run = arguments(data, "run", max_steps=1)
    train_teacher.train(recipe, run, log=lambda s: None)
    recipe.lr = 0.05
    with pytest.raises(ValueError, match=r"another recipe.*'lr': \(0.1, 0.05\)"):
        train_teacher.train(recipe, run, log=lambda s: None)


def test_bad_recipe_and_missing_data_are_named(tmp_path):
    with pytest.raises(ValueError, match="--schedule 'step' is not one of"):
        train_teacher.TeacherRecipe(schedule="step")
    with pytest.raises(FileNotFoundError, match="missing.parquet does not exist: build it first"):
        train_teacher.load_split(tmp_path / "missing.parquet")
