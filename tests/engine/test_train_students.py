"""The supervised engine trains a tiny ViT student end to end (train, checkpoint, evaluate), and
the tuning policy decides which weights move."""

import torch
from lightning_fabric.utilities.seed import seed_everything

from co2s.api import evaluate_checkpoint, train
from co2s.config.loader import validate
from co2s.models.factory import build_models
from co2s.models.loading import read_checkpoint
from tests.conftest import tiny_config_dict


def test_supervised_training_of_a_tiny_dinov3_student_moves_only_what_its_policy_trains(tiny_dataset, tmp_path):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=3, val_every=3)
    cfg["model"] = {"name": "students", "students": [
        {"name": "dino", "backbone": {"kind": "dinov3", "arch": "tiny", "tune": "attention"},
         "guidance": "queries"}]}
    config = validate(cfg)
    result = train(config, progress=False)
    assert result.steps == 3 and result.best is not None and result.best["step"] == 3

    # The weights the run started from: the trainer seeds with train.seed, then builds the models.
    seed_everything(config.train.seed, verbose=False)
    (initial,) = build_models(config).values()
    trained = read_checkpoint(result.latest_checkpoint)["dino"]
    moved = {name for name, p in initial.state_dict().items() if not torch.equal(p, trained[name])}
    trainable = {name for name, p in initial.named_parameters() if p.requires_grad}
    backbone_moved = {n for n in moved if n.startswith("backbone.")}
    assert backbone_moved and all(any(a in n for a in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in backbone_moved)
    assert moved <= trainable  # frozen weights (MLPs, norms, patch embedding) never change
    assert any(not n.startswith("backbone.") for n in moved)  # the head trains

    # The last step is the best one: scoring its checkpoint again gives the validation's figure.
    metrics = evaluate_checkpoint(result.latest_checkpoint, split=result.best["split"], progress=False)
    assert metrics["checkpoint_step"] == 3 and metrics["mIoU"] == result.best["mIoU"]
