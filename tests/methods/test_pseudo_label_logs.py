"""The weak view's diagnostics: what share of the pseudo-labels is confident, overall and by class,
and (with masks on the unlabelled images) how often they are right."""

from types import SimpleNamespace

import torch

from co2s.methods.unimatch import pseudo_label_logs

DATA = SimpleNamespace(classes=["soil", "bedrock", "sand", "big_rock"], ignore_index=255)


def test_confident_ratio_by_class_counts_valid_pixels_of_each_pseudo_label():
    # one image of 2 x 5: soil 3 px (2 confident), bedrock 1 px (confident), sand 2 px valid (none
    # confident) and 1 invalid confident sand px that counts nowhere; big_rock never predicted.
    labels = torch.tensor([[[0, 0, 0, 1, 2], [2, 2, 3, 3, 3]]])
    conf = torch.tensor([[[0.9, 0.95, 0.5, 0.99, 0.6], [0.7, 0.99, 0.1, 0.2, 0.3]]])
    valid = torch.tensor([[[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]], dtype=torch.bool)
    logs = pseudo_label_logs(labels, conf, valid, None, 0.8, DATA)
    assert logs["confident_ratio"] == 3 / 6
    assert logs["confident_ratio:soil"] == 2 / 3
    assert logs["confident_ratio:bedrock"] == 1.0
    assert logs["confident_ratio:sand"] == 0.0  # predicted on 2 valid pixels, confident on none
    assert "confident_ratio:big_rock" not in logs  # only on invalid pixels: nothing to say
    assert "pseudo_label_acc" not in logs


def test_pseudo_label_accuracy_leaves_out_unlabelled_pixels_of_the_mask():
    labels = torch.tensor([[[0, 1, 2, 2]]])
    conf = torch.tensor([[[0.9, 0.9, 0.5, 0.9]]])
    valid = torch.ones(1, 1, 4, dtype=torch.bool)
    gt = torch.tensor([[[0, 2, 2, 255]]])
    logs = pseudo_label_logs(labels, conf, valid, gt, 0.8, DATA)
    assert logs["pseudo_label_acc"] == 2 / 3  # soil and sand right, bedrock wrong; px 4 unlabelled
    assert logs["pseudo_label_acc_confident"] == 1 / 2  # confident and labelled: soil (right), bedrock
    assert logs["confident_ratio:sand"] == 1 / 2
