"""The models every shared model check runs over (in the spirit of segmentation-models-pytorch's
``BaseModelTester``): the built-in CNN and the tiny random-weight CLIP, DINOv3, DINOv2 and CNN
students with each head and guidance that applies, built through the real config and factory code.

``MODEL_CASES`` are single models (``build_model``); ``SEGMENTER_CASES`` add two-student fusions
(``build_segmenter``), for the checks that go through :class:`~co2s.inference.segmenter.Segmenter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from co2s.config.loader import validate
from co2s.inference.segmenter import Segmenter
from co2s.models.factory import build_models
from tests.conftest import tiny_config_dict

NUM_CLASSES = 3
#: heights and widths that are multiples of neither the ViT patch (16) nor the CNN's stride
ODD_SIZES = [(37, 53), (50, 33)]


def student(kind: str, guidance: str, head: str, tune: str = "attention", name: str | None = None) -> dict:
    """A tiny random-weight student's config section."""
    cfg = {"name": name or kind, "backbone": {"kind": kind, "arch": "tiny", "tune": tune},
           "guidance": guidance, "head": head}
    if guidance == "text":
        cfg["text"] = {"prototypes": "random"}
    return cfg


@dataclass(frozen=True)
class ModelCase:
    id: str
    model: dict  # the config's ``model`` section
    method: str = "supervised"
    tune: str | None = None  # the backbone's tuning policy (students)
    marks: tuple = ()  # marks for the gradient check only (known bugs)

    @property
    def param(self):
        return pytest.param(self, id=self.id)


def _student_case(kind, guidance, head, tune="attention", marks=()) -> ModelCase:
    suffix = "" if tune == "attention" else f"-{tune}"
    case_id = f"{kind}-{head}" + (f"-{guidance}" if head == "vlg" else "") + suffix
    return ModelCase(case_id, {"name": "students", "students": [student(kind, guidance, head, tune)]},
                     tune=tune, marks=marks)


MODEL_CASES = [
    ModelCase("lite_unet", {"name": "lite_unet", "width": 8, "depth": 3}),
    _student_case("clip", "text", "vlg"),
    _student_case("clip", "queries", "vlg"),
    _student_case("clip", "none", "deeplabv3plus"),
    _student_case("dinov3", "queries", "vlg"),
    _student_case("dinov3", "none", "deeplabv3plus"),
    _student_case("dinov2", "queries", "vlg"),
    _student_case("dinov2", "none", "deeplabv3plus"),
    # full tuning: CLIP keeps its last block's unused queries/keys frozen (ClipBackbone.freeze_unused)
    _student_case("clip", "text", "vlg", tune="full"),
    # full tuning: the DINO backbones keep their pretraining-only mask token frozen (_DinoFamily.freeze_unused)
    _student_case("dinov3", "queries", "vlg", tune="full"),
    # the random-init CNN backbone (no attention: tuned full)
    _student_case("cnn", "queries", "vlg", tune="full"),
    _student_case("cnn", "none", "deeplabv3plus", tune="full"),
]

FUSION_CASE = ModelCase("fusion-clip-dinov3", {"name": "students", "students": [
    student("clip", "text", "vlg"), student("dinov3", "queries", "vlg", name="dino")]}, method="co2s")
#: the demo's kind of pair: a ViT with text prototypes and the CNN with queries
CNN_FUSION_CASE = ModelCase("fusion-clip-cnn", {"name": "students", "students": [
    student("clip", "text", "vlg"), student("cnn", "queries", "vlg", tune="full")]}, method="co2s")

SEGMENTER_CASES = [*(c for c in MODEL_CASES if c.tune in (None, "attention")), FUSION_CASE, CNN_FUSION_CASE]


def case_config(case: ModelCase, root: Path | None = None):
    """The validated config of ``case`` (the data folder need not exist: nothing is read)."""
    root = root or Path("harness-data")
    cfg = tiny_config_dict(root, root.parent / "harness-run", classes=NUM_CLASSES, method=case.method)
    cfg["model"] = case.model
    if case.method == "co2s":
        cfg["data"]["splits"]["unlabelled"] = "train.txt"
    return validate(cfg)


def build_model(case: ModelCase, seed: int = 0):
    """The single model of ``case``, freshly built (random weights from ``seed``), in eval mode."""
    torch.manual_seed(seed)
    models = build_models(case_config(case))
    assert len(models) == 1, f"{case.id} builds {sorted(models)}"
    return next(iter(models.values())).eval()


def build_segmenter(case: ModelCase, seed: int = 0, prediction: str | None = None) -> Segmenter:
    torch.manual_seed(seed)
    config = case_config(case)
    return Segmenter.from_config(build_models(config), config, prediction).eval()
