import torch

from co2s.inference.fusion import fuse


def _logits(probs):
    return torch.tensor(probs).log().T.reshape(1, 2, 1, -1)


def test_mean_and_confidence_fusion_on_a_hand_example():
    # three pixels, two classes: a more confident, b more confident, a tie in confidence
    a = _logits([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3]])
    b = _logits([[0.2, 0.8], [0.05, 0.95], [0.3, 0.7]])
    mean = fuse(a, b, "mean")[0, :, 0].T
    torch.testing.assert_close(mean, torch.tensor([[0.55, 0.45], [0.325, 0.675], [0.5, 0.5]]))
    conf = fuse(a, b, "confidence")[0, :, 0].T
    torch.testing.assert_close(conf, torch.tensor([[0.9, 0.1], [0.05, 0.95], [0.5, 0.5]]))
