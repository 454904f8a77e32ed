"""`DistillationTrainer`: knowledge distillation of image classifiers with `transformers.Trainer`.

The student is the Trainer's model (optimised, checkpointed, wrapped for DDP, FSDP or DeepSpeed); the
teacher is a frozen passenger: on every process's device, in eval mode, without gradients, in its own
precision (float32 weights; bf16 autocast under `--bf16`, and under `--fp16` where the device computes
bf16 natively), never wrapped and never saved. Both may be timm models (`model(x) -> logits`) or
transformers image classifiers (`model(pixel_values=x).logits`).
"""

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import EvalPrediction, Trainer, TrainerCallback

from .config import DistillationTrainingArguments
from .data import DistillationCollator, model_data_config
from .features import native_bf16, resolve_precision
from .files import default_cache_dir
from .logit_cache import TeacherLogitCache, state_dict_digest
from .losses import kd_loss

__all__ = ["DistillationTrainer", "TeacherInputAdapter", "accuracy_metrics"]

logger = logging.getLogger(__name__)

# Keys of the batches DistillationCollator builds; with `remove_unused_columns=True` these are the
# columns the Trainer keeps (the student's forward signature says nothing about them for timm models).
BATCH_KEYS = ("pixel_values", "labels", "teacher_logits", "row_ids", "epoch")


def accuracy_metrics(eval_pred: EvalPrediction) -> Dict[str, float]:
    """Top-1 accuracy of the student's logits: the default `compute_metrics` of `DistillationTrainer`.

    Computed directly rather than with `evaluate.load("accuracy")`: that call fetches the metric
    script from the Hugging Face Hub and so fails offline, while this is one line of NumPy with the
    same result.
    """
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits  # (N, C)
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


class DistillationTrainer(Trainer):
    """Knowledge distillation of an image-classification student from a frozen teacher.

    (Not trl's `DistillationTrainer`, which distils causal language models.) The loss is
    `hf_ifbeta.losses.kd_loss`: `alpha * tau^2 * KL(teacher || student) + (1 - alpha) * CE(student, labels)`,
    with `alpha` and `temperature` from `DistillationTrainingArguments`. Batches hold `pixel_values`
    (B, 3, H, W), `labels` (B,) and optionally `teacher_logits` (B, C), a cached teacher: when
    present the teacher is not run. Build them with `hf_ifbeta.data.prepare_image_dataset` and the
    default `DistillationCollator`.

    The teacher's input is the student's: when their timm data configs differ in normalisation it is
    re-normalised (`x_t = (x_s * std_s + mean_s - mean_t) / std_t`), and when the spatial size
    differs from the teacher's input size it is resized (the teacher's interpolation). Models
    without a timm data config (e.g. transformers models) feed the teacher unchanged unless
    `student_data_config` / `teacher_data_config` say otherwise.

    The teacher runs in bf16 autocast under `bf16=True`; under `fp16=True` in bf16 where the device
    computes it natively and in float32 elsewhere, never in fp16 (whose range some teachers' activations
    overflow). Its input is cast to its weights' dtype, since DeepSpeed hands the batch over in its own
    half precision. Its logits are checked to be finite on the first batch.

    The training logs carry `kd_loss` and `ce_loss`, the unweighted parts of `loss`, averaged over
    the logging interval and over processes. Evaluation reports `eval_loss` (the KD loss) and, by
    default, `eval_accuracy` of the student.

    Args:
        model (`nn.Module`): the student. Trained, saved in checkpoints.
        teacher_model (`nn.Module`, *optional*): the teacher. Moved to the accelerator's device,
            switched to eval mode and frozen (`requires_grad_(False)`) in place. May be None only
            when every batch carries `teacher_logits`.
        args (`DistillationTrainingArguments`): training arguments with `alpha` and `temperature`.
        data_collator (`Callable`, *optional*): defaults to `DistillationCollator()`.
        compute_metrics (`Callable`, *optional*): defaults to `accuracy_metrics` (top-1).
        student_data_config (`dict`, *optional*), teacher_data_config (`dict`, *optional*): override
            the timm data configs (`input_size`, `mean`, `std`, `interpolation`) used to adapt the
            teacher's input.
        **kwargs: the other `transformers.Trainer` arguments (`train_dataset`, `eval_dataset`,
            `callbacks`, `optimizers`, ...).

    Example:
    ```python
    >>> import timm, hf_ifbeta
    >>> from hf_ifbeta.data import prepare_image_dataset
    >>> student = timm.create_model("cifar10_resnet20")
    >>> args = hf_ifbeta.DistillationTrainingArguments(output_dir="out", alpha=0.9, temperature=4.0)
    >>> trainer = hf_ifbeta.DistillationTrainer(
    ...     model=student, teacher_model=teacher, args=args,
    ...     train_dataset=prepare_image_dataset(ds["train"], student, "img", "label"),
    ...     eval_dataset=prepare_image_dataset(ds["test"], student, "img", "label", train=False))
    >>> trainer.train()
    ```
    """

    # compute_loss returns the mean over one micro-batch: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        teacher_model: Optional[nn.Module] = None,
        args: Optional[DistillationTrainingArguments] = None,
        data_collator: Optional[Callable] = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        compute_metrics: Optional[Callable[[EvalPrediction], Dict]] = None,
        student_data_config: Optional[Dict[str, Any]] = None,
        teacher_data_config: Optional[Dict[str, Any]] = None,
        **kwargs,
    ):
        if args is None:
            args = DistillationTrainingArguments(output_dir="tmp_trainer")
        if not (hasattr(args, "alpha") and hasattr(args, "temperature")):
            raise TypeError(
                f"DistillationTrainer needs DistillationTrainingArguments (with alpha and temperature), got "
                f"{type(args).__name__}. Use hf_ifbeta.DistillationTrainingArguments(...)."
            )
        if args.label_smoothing_factor != 0:
            raise ValueError(
                f"label_smoothing_factor={args.label_smoothing_factor} is not supported by DistillationTrainer: "
                "the KD term already trains on soft targets. Set it to 0."
            )
        if "compute_loss_func" in kwargs:
            raise TypeError("DistillationTrainer computes the KD loss itself; it takes no compute_loss_func.")
        if args.channels_last and model is not None:
            model = model.to(memory_format=torch.channels_last)
        if getattr(train_dataset, "seed", 0) is None and hasattr(train_dataset, "set_seed"):
            train_dataset.set_seed(args.seed)  # the augmentation stream follows the run's seed
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator if data_collator is not None else DistillationCollator(),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics if compute_metrics is not None else accuracy_metrics,
            **kwargs,
        )
        if hasattr(train_dataset, "set_epoch"):
            # accelerate's loader skips `dataset.set_epoch` when its sampler has one, as a resumed run's does.
            self.add_callback(_EpochToDataset(train_dataset))
        # The student is called with `pixel_values` only: no loss kwargs, so no per-step item count.
        self.model_accepts_loss_kwargs = False
        device = self.accelerator.device

        student = self.accelerator.unwrap_model(self.model)
        self._student_keyword = _takes_pixel_values(student)
        self.teacher_model = teacher_model
        self._teacher_keyword = False
        self._teacher_input = None
        self.teacher_precision = teacher_precision(args, device)
        if args.bf16 and device.type == "cpu" and not native_bf16(device):
            logger.warning(
                "bf16=True on a CPU without native bfloat16 (neither AVX512-BF16 nor AMX): autocast emulates it, and "
                "distillation runs many times slower than in float32. Leave bf16 off on this machine."
            )
        self._teacher_checked = False  # its logits are checked for NaN / inf once, on the first batch
        if teacher_model is not None:
            # Not an attribute of the student: stays out of the optimizer, DDP and checkpoints.
            self.teacher_model = teacher_model.to(device).eval().requires_grad_(False)
            if args.channels_last:
                self.teacher_model.to(memory_format=torch.channels_last)
            self._teacher_keyword = _takes_pixel_values(teacher_model)
            student_cfg = _data_config(student, student_data_config)
            teacher_cfg = _data_config(teacher_model, teacher_data_config)
            if student_cfg is None or teacher_cfg is None:
                logger.info(
                    "No timm data config for the %s: the teacher gets the student's input as is. Pass "
                    "student_data_config / teacher_data_config to re-normalise or resize it.",
                    "student" if student_cfg is None else "teacher",
                )
            self._teacher_input = TeacherInputAdapter.from_configs(student_cfg, teacher_cfg, device)

        self.logit_cache = self._make_logit_cache(train_dataset)
        # Fail before training: a dataset the batches cannot be built from, then disagreeing class counts.
        example = self._check_dataset(train_dataset, "training", train=True)
        if isinstance(eval_dataset, Mapping):
            for name, dataset in eval_dataset.items():
                self._check_dataset(dataset, f"evaluation ({name!r})", train=False)
        else:
            self._check_dataset(eval_dataset, "evaluation", train=False)
        if teacher_model is not None:
            self._check_num_classes(student, example)

        # Running sums since the last training log: [kd, ce, number of micro-batches].
        self._kd_parts = torch.zeros(3, device=self.args.device)
        self.teacher_forward_rows = 0  # rows the teacher has run on, for the logs and the cache's tests

    # ---- loss ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: Dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Optional[Union[torch.Tensor, int]] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        """KD loss of a batch; with `return_outputs`, also `{"logits": student, "teacher_logits": teacher}`.

        `num_items_in_batch` is ignored: the loss is a mean over the micro-batch's images.
        """
        pixel_values = self._pixels(inputs)  # (B, 3, H, W)
        labels = inputs.get("labels")  # (B,) or None
        with self.accelerator.autocast():
            student_logits = _forward_logits(model, pixel_values, self._student_keyword)  # (B, C)
        teacher_logits = inputs.get("teacher_logits")  # (B, C) when precomputed
        if teacher_logits is None and self.logit_cache is not None and model.training and "row_ids" in inputs:
            epoch = int(inputs["epoch"][0])  # one epoch per batch: the dataset's set_epoch
            teacher_logits = self.logit_cache.get(
                epoch, inputs["row_ids"], lambda missing: self.teacher_logits(pixel_values[missing])
            )
        elif teacher_logits is None:
            teacher_logits = self.teacher_logits(pixel_values)
        loss, kd, ce = kd_loss(
            student_logits, teacher_logits, labels, alpha=self.args.alpha, temperature=self.args.temperature
        )
        if model.training:
            # Detached running sums, read (and synchronised) only when logging.
            self._kd_parts += torch.stack([kd.detach(), ce.detach(), torch.ones_like(kd)]).to(self._kd_parts)
        if return_outputs:
            return loss, {"logits": student_logits, "teacher_logits": teacher_logits}
        return loss

    @torch.no_grad()
    def teacher_logits(self, pixel_values: torch.Tensor, adapt_input: bool = True) -> torch.Tensor:
        """The frozen teacher's logits (B, C) for the student's input `pixel_values` (B, 3, H, W); with
        `adapt_input=False`, for a batch already prepared with the teacher's own transform."""
        if self.teacher_model is None:
            raise ValueError(
                "The batch carries no `teacher_logits` and the trainer has no teacher_model: pass teacher_model=... "
                "or cache teacher logits in the dataset (prepare_image_dataset(teacher_logits_column=...))."
            )
        if self.teacher_model.training:  # someone switched it back; BatchNorm statistics must not move
            self.teacher_model.eval()
        self.teacher_forward_rows += len(pixel_values)
        # DeepSpeed casts the batch to its half precision and turns accelerate's autocast off; the
        # teacher's weights stay float32.
        x = pixel_values.to(_parameter_dtype(self.teacher_model))
        if adapt_input:
            x = self._teacher_input(x)
        if self.args.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        device_type = x.device.type
        # The teacher's own autocast (off for fp32 overrides the student's), never fp16.
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.teacher_precision == "bf16"):
            logits = _forward_logits(self.teacher_model, x, self._teacher_keyword)
        if not self._teacher_checked:
            self._check_teacher_logits(logits)
        return logits

    def _check_teacher_logits(self, logits: torch.Tensor) -> None:
        finite = torch.isfinite(logits).all(dim=-1)  # (B,)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0])
            raise ValueError(
                f"The teacher's logits are NaN or infinite (row {row} of the first batch, {int((~finite).sum())} of "
                f"{len(finite)} rows; teacher run in {self.teacher_precision}, input dtype {logits.dtype}). Check the "
                "teacher's weights and that the batch is normalised as its data config says."
            )
        self._teacher_checked = True

    def _pixels(self, inputs: Dict[str, Any]) -> torch.Tensor:
        pixel_values = inputs["pixel_values"]
        if self.args.channels_last and pixel_values.dim() == 4:
            return pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values

    def _make_logit_cache(self, train_dataset: Any):
        """The `TeacherLogitCache` of this run's teacher and augmentation stream, or None when off."""
        if not self.args.teacher_logit_cache:
            return None
        if not hasattr(train_dataset, "augmentation_identity"):
            raise ValueError(
                "teacher_logit_cache=True needs a training set with a seeded augmentation stream: "
                "hf_ifbeta.data.prepare_image_dataset(...) of images up to 64 px gives one; got "
                f"{type(train_dataset).__name__}."
            )
        if self.teacher_model is None:
            raise ValueError("teacher_logit_cache=True needs a teacher_model to fill the cache.")
        identity = {
            "teacher": state_dict_digest(self.teacher_model),
            "teacher_input": repr(self._teacher_input),
            "precision": self.teacher_precision,
            "data": train_dataset.augmentation_identity(),
        }
        root = self.args.teacher_logit_cache_dir or default_cache_dir() / "teacher_logits"
        return TeacherLogitCache(root, identity, num_rows=identity["data"]["source_rows"])

    # ---- evaluation ----

    def prediction_step(
        self,
        model: nn.Module,
        inputs: Dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: Optional[List[str]] = None,
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """`(KD loss, student logits (B, C) float32, labels (B,))`; no loss without labels unless alpha == 1, nor
        without teacher logits."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        # Without a teacher and cached logits (a student trained on cached ones) there is accuracy but no KD loss.
        has_teacher = self.teacher_model is not None or inputs.get("teacher_logits") is not None
        with torch.no_grad():
            if has_teacher and (labels is not None or self.args.alpha == 1.0):
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss, logits = loss.detach(), outputs["logits"]
            else:
                loss = None
                with self.accelerator.autocast():
                    logits = _forward_logits(model, self._pixels(inputs), self._student_keyword)
        if prediction_loss_only:
            return loss, None, None
        return loss, logits.detach().float(), labels

    # ---- saving and sharing ----

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save as transformers does, except under FSDP with a sharded or local state dict (accelerate's
        default): transformers then writes no weights file, so the full state dict is gathered (a
        collective: every process calls `save_model`, as the Trainer does) and saved as `model.safetensors`."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if not self.is_fsdp_enabled or plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self._save(output_dir, state_dict=self.accelerator.get_state_dict(self.model))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[Dict] = None) -> None:
        """Save as transformers does, plus timm's `config.json` for a timm student, so that the folder (and a
        pushed repo) loads with `timm.create_model("local-dir:<folder>")` / `"hf-hub:<repo>"`."""
        if self.args.channels_last:
            # safetensors stores contiguous tensors only; channels_last conv weights are not.
            if state_dict is None:
                state_dict = self.accelerator.unwrap_model(self.model).state_dict()
            state_dict = {k: v.contiguous() for k, v in state_dict.items()}
        super()._save(output_dir, state_dict)
        student = self.accelerator.unwrap_model(self.model)
        if _is_timm_model(student) and self.args.should_save:
            from timm.models._hub import save_config_for_hf

            output_dir = output_dir if output_dir is not None else self.args.output_dir
            save_config_for_hf(student, os.path.join(output_dir, "config.json"))

    def create_model_card(
        self,
        teacher: Optional[str] = None,
        subset: Optional[str] = None,
        dataset: Optional[Union[str, List[str]]] = None,
        **kwargs,
    ) -> None:
        """A model card recording the teacher, the training subset and the KD settings (timm students);
        transformers models get transformers' card. `trainer.push_to_hub(teacher=..., subset=...)` passes
        these through."""
        student = self.accelerator.unwrap_model(self.model)
        if not _is_timm_model(student):
            return super().create_model_card(dataset=dataset, **kwargs)
        if not self.is_world_process_zero():
            return
        from .hub import write_student_card

        teacher = teacher or (getattr(self.teacher_model, "pretrained_cfg", None) or {}).get("architecture")
        evals = [log for log in self.state.log_history if "eval_accuracy" in log]
        kd = {
            "alpha": self.args.alpha,
            "temperature": self.args.temperature,
            "epochs": self.args.num_train_epochs,
            "learning_rate": self.args.learning_rate,
            "optimizer": getattr(self.args.optim, "value", str(self.args.optim)),  # "sgd", not "OptimizerNames.SGD"
            "train_batch_size": self.args.per_device_train_batch_size * self.args.world_size,
        }
        # transformers' card options that a model card's metadata holds; the rest (model_name, tasks, ...) are its own
        card_data = {k: kwargs[k] for k in ("license", "language", "tags") if kwargs.get(k) is not None}
        if kwargs.get("finetuned_from") is not None:
            card_data["base_model"] = kwargs["finetuned_from"]
        write_student_card(
            student, self.args.output_dir, teacher=teacher, subset=subset, kd_settings=kd,
            metrics={"accuracy": evals[-1]["eval_accuracy"]} if evals else None, dataset=dataset, card_data=card_data,
        )

    # ---- logging ----

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        """Add `kd_loss` and `ce_loss` (means since the last log, over all processes) to the training logs."""
        if "loss" in logs:  # the periodic training log, reached by every process at the same step
            parts = self.accelerator.reduce(self._kd_parts, reduction="sum")  # (3,)
            if parts[2] > 0:
                logs["kd_loss"] = (parts[0] / parts[2]).item()
                logs["ce_loss"] = (parts[1] / parts[2]).item()
            self._kd_parts.zero_()
        super().log(logs, start_time)

    def _remove_unused_columns(self, dataset, description: Optional[str] = None):
        # A dataset with a transform (`prepare_image_dataset` for large inputs) reads its raw image column and
        # returns only batch keys: removing the columns would leave the transform nothing to read.
        if getattr(dataset, "format", {}).get("type") == "custom":
            return dataset
        return super()._remove_unused_columns(dataset, description=description)

    def _set_signature_columns_if_needed(self) -> None:
        # With `remove_unused_columns=True`, keep the batch keys rather than the student's forward arguments.
        if self._signature_columns is None:
            self._signature_columns = list(dict.fromkeys([*BATCH_KEYS, *self.label_names, "label", "label_ids"]))

    # ---- checks ----

    def _check_dataset(self, dataset: Any, description: str, train: bool) -> Optional[Dict[str, torch.Tensor]]:
        """Build a one-row batch the way the dataloader will; raise a ValueError naming what is missing."""
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
            return None
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            return None
        if len(dataset) == 0:
            raise ValueError(f"The {description} dataset is empty.")
        required = ["pixel_values"]
        if train and self.args.alpha < 1.0:
            required.append("labels")
        if self.teacher_model is None and train:
            required.append("teacher_logits")
        hint = (
            f"DistillationTrainer's batches need {required}. For a dataset of images, prepare it with "
            "hf_ifbeta.data.prepare_image_dataset(dataset, student, image_column=..., label_column=...)"
        )
        try:
            import datasets

            collator = self.data_collator
            if isinstance(dataset, datasets.Dataset):
                dataset = self._remove_unused_columns(dataset, description=description)
            else:
                collator = self._get_collator_with_removed_columns(collator, description=description)
            row = dataset[0]
        except Exception as err:
            raise ValueError(f"Cannot read the first row of the {description} dataset: {err}. {hint}.") from err
        keys = list(row.keys()) if isinstance(row, Mapping) else type(row).__name__
        try:
            batch = collator([row])
        except Exception as err:
            raise ValueError(
                f"Cannot collate the first row of the {description} dataset (its keys: {keys}): {err!r}. {hint}."
            ) from err
        missing = [key for key in required if key not in batch]
        if missing:
            raise ValueError(
                f"The {description} batches lack {missing} (first row's keys: {keys}; batch keys: "
                f"{list(batch.keys())}). {hint}."
            )
        return batch

    def _check_num_classes(self, student: nn.Module, example: Optional[Dict[str, torch.Tensor]]) -> None:
        pixel_values = None if example is None else example["pixel_values"][:1]
        n_student = _num_classes(student, self._student_keyword, pixel_values, self.accelerator.device)
        teacher_input = None if pixel_values is None else self._teacher_input(pixel_values.to(self.accelerator.device))
        n_teacher = _num_classes(self.teacher_model, self._teacher_keyword, teacher_input, self.accelerator.device)
        if n_student != n_teacher:
            raise ValueError(
                f"The student predicts {n_student} classes but the teacher predicts {n_teacher}: KD needs the same "
                "classes in the same order. Create the student with num_classes matching the teacher."
            )


class _EpochToDataset(TrainerCallback):
    """Tell the training set which epoch starts (its augmentation stream depends on it), resumed runs included."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch + 1e-6))  # state.epoch is a float: e.3 mid-epoch on a resume


class TeacherInputAdapter:
    """Map the student's normalised input to the teacher's: re-normalise and resize when they differ.

    `x_t = x_s * std_s / std_t + (mean_s - mean_t) / std_t` per channel, then a resize to the
    teacher's (H, W) when the batch has another spatial size. The identity when both configs are
    unknown or equal.
    """

    def __init__(
        self,
        scale: Optional[torch.Tensor] = None,
        shift: Optional[torch.Tensor] = None,
        size: Optional[Tuple[int, int]] = None,
        interpolation: str = "bilinear",
    ):
        self.scale, self.shift, self.size = scale, shift, size  # scale, shift: (1, 3, 1, 1)
        self.mode = interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear"

    def __repr__(self) -> str:
        values = {k: None if v is None else v.flatten().tolist() for k, v in (("scale", self.scale), ("shift", self.shift))}
        return f"{type(self).__name__}(scale={values['scale']}, shift={values['shift']}, size={self.size}, mode={self.mode!r})"

    @classmethod
    def from_configs(
        cls, student: Optional[Dict[str, Any]], teacher: Optional[Dict[str, Any]], device: torch.device
    ) -> "TeacherInputAdapter":
        if teacher is None:
            return cls()
        size = tuple(teacher["input_size"][-2:]) if "input_size" in teacher else None
        scale = shift = None
        if student is not None and all(k in d for d in (student, teacher) for k in ("mean", "std")):
            mean_s, std_s, mean_t, std_t = (
                torch.tensor(d[k], dtype=torch.float32, device=device).view(1, -1, 1, 1)
                for d, k in ((student, "mean"), (student, "std"), (teacher, "mean"), (teacher, "std"))
            )
            if not (torch.equal(mean_s, mean_t) and torch.equal(std_s, std_t)):
                scale, shift = std_s / std_t, (mean_s - mean_t) / std_t
        return cls(scale, shift, size, teacher.get("interpolation", "bilinear"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            antialias = self.mode in ("bilinear", "bicubic")
            x = F.interpolate(x, size=self.size, mode=self.mode, antialias=antialias, align_corners=None)
        if self.scale is not None:
            x = x * self.scale.to(x) + self.shift.to(x)
        return x


def teacher_precision(args: DistillationTrainingArguments, device: torch.device) -> str:
    """How the teacher runs: "bf16" under `args.bf16`; under `args.fp16` "bf16" where `device` computes it natively,
    else "fp32"; "fp32" otherwise."""
    if args.bf16:
        return "bf16"
    if args.fp16:
        return resolve_precision("auto", torch.device(device))
    return "fp32"


def _parameter_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 when it has none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _data_config(model: nn.Module, override: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The model's timm data config, or `override`, or None when unknown (not a timm model)."""
    if override is not None:
        return dict(override)
    if getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None):
        return model_data_config(model)
    return None


def _is_timm_model(model: nn.Module) -> bool:
    """Built by timm (a registry architecture with its pretrained config), so timm's save/load format applies."""
    cfg = getattr(model, "pretrained_cfg", None)
    return isinstance(cfg, dict) and "architecture" in cfg and hasattr(model, "num_classes")


def _takes_pixel_values(model: nn.Module) -> bool:
    """True for transformers image models (`forward(pixel_values=...)`), False for timm (`forward(x)`)."""
    try:
        return "pixel_values" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward_logits(model: nn.Module, pixel_values: torch.Tensor, keyword: bool) -> torch.Tensor:
    """Logits (B, C) of a timm model (a tensor) or a transformers classifier (`.logits`)."""
    out = model(pixel_values=pixel_values) if keyword else model(pixel_values)
    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    if isinstance(out, Mapping):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"Cannot find logits in the model output of type {type(out).__name__}.")


def _num_classes(
    model: nn.Module, keyword: bool, pixel_values: Optional[torch.Tensor], device: torch.device
) -> int:
    """Classes a model predicts: `num_classes` (timm), `config.num_labels` (transformers), else a dummy forward."""
    for value in (getattr(model, "num_classes", None), getattr(getattr(model, "config", None), "num_labels", None)):
        if isinstance(value, int) and value > 0:
            return value
    if pixel_values is None:
        cfg = _data_config(model, None) or {}
        config = getattr(model, "config", None)
        size = getattr(config, "image_size", None)
        if "input_size" in cfg:
            shape = tuple(cfg["input_size"])
        elif isinstance(size, int):
            shape = (getattr(config, "num_channels", 3), size, size)
        else:
            shape = (3, 224, 224)
        pixel_values = torch.zeros(1, *shape)
    was_training = model.training
    model.eval()  # BatchNorm in training mode rejects a batch of one
    try:
        with torch.no_grad():
            return int(_forward_logits(model, pixel_values.to(device), keyword).shape[-1])
    finally:
        model.train(was_training)
