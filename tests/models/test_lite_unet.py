import pytest
import torch

from co2s.models.lite_unet import LiteUNet


@pytest.mark.parametrize("bands,size", [(3, (64, 64)), (1, (50, 70)), (5, (33, 47))])
def test_logits_have_input_size(bands, size):
    model = LiteUNet(num_classes=4, in_channels=bands, width=8, depth=3).eval()
    out = model(torch.rand(2, bands, *size))
    assert out.shape == (2, 4, *size)


def test_feature_perturbation_stream():
    torch.manual_seed(0)
    model = LiteUNet(num_classes=3, width=8, depth=3, dropout=0.0).eval()
    x = torch.rand(2, 3, 32, 32)
    clean, perturbed = model(x, perturb_features=True)
    assert clean.shape == perturbed.shape == (2, 3, 32, 32)
    # the clean half of the shared decoder pass equals an ordinary forward
    torch.testing.assert_close(clean, model(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(clean, perturbed)


def test_normalisation_travels_in_state_dict_and_checks_band_count():
    model = LiteUNet(num_classes=2, in_channels=2, width=8, depth=2, mean=[0.5, 0.1], std=[0.2, 0.4])
    state = model.state_dict()
    assert torch.equal(state["mean"].flatten(), torch.tensor([0.5, 0.1]))
    x = torch.full((1, 2, 4, 4), 0.5)
    assert torch.allclose(model.normalize(x)[0, :, 0, 0], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="expects 2 band"):
        model(torch.rand(1, 3, 16, 16))


def test_gradients_reach_every_parameter():
    model = LiteUNet(num_classes=3, width=8, depth=3)
    out = model(torch.rand(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 32, 32))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
