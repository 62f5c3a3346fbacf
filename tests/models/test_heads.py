import pytest
import torch
import torch.nn.functional as F

from co2s.models.heads import DeepLabV3PlusHead, LanguageGuidedHead
from co2s.models.heads.blocks import gn_groups
from co2s.models.heads.vlg import cost_volume

# small widths keep the forward passes fast; the structure is the paper's
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny tensors here run fastest on one thread (and do not fight over shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = dict(hidden=32, skip_channels=(8, 8), stage_channels=(16, 16), group_size=8)


def small_head(dim=24, skip_dims=(20, 12)):
    torch.manual_seed(0)
    return LanguageGuidedHead(dim, dim, skip_dims, **SMALL)


def inputs(b=2, n=4, dim=24, hw=(4, 4), skip_dims=(20, 12), seed=1):
    g = torch.Generator().manual_seed(seed)
    feature = torch.randn(b, dim, *hw, generator=g)
    guidance = torch.randn(n, dim, generator=g)
    skips = [torch.randn(b, c, *hw, generator=g) for c in skip_dims]
    return feature, guidance, skips


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("hw,out_size", [((4, 4), (64, 64)), ((3, 5), (48, 80)), ((5, 7), (80, 112))])
def test_vlg_output_shape(hw, out_size):
    head = small_head().eval()
    feature, guidance, skips = inputs(hw=hw)
    with torch.no_grad():
        out = head(feature, guidance, skips, out_size)
    assert out.shape == (2, 4, *out_size)
    assert torch.isfinite(out).all()


def test_vlg_without_out_size_gives_4x_maps():
    head = small_head().eval()
    feature, guidance, skips = inputs(hw=(5, 7))
    with torch.no_grad():
        assert head(feature, guidance, skips, None).shape == (2, 4, 20, 28)


def test_cost_volume_is_cosine_similarity():
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(2, 6, 3, 5, generator=g) * 3
    guidance = torch.randn(4, 6, generator=g)
    expected = torch.empty(2, 4, 3, 5)
    for b in range(2):
        for n in range(4):
            expected[b, n] = F.cosine_similarity(feature[b], guidance[n][:, None, None], dim=0)
    torch.testing.assert_close(cost_volume(feature, guidance), expected, rtol=1e-5, atol=1e-6)
    # per-image guidance [B, N, C] gives the same for identical rows
    torch.testing.assert_close(cost_volume(feature, guidance.expand(2, -1, -1)), expected, rtol=1e-5, atol=1e-6)
    # scale invariance in both arguments
    torch.testing.assert_close(cost_volume(feature * 7, guidance * 0.1), expected, rtol=1e-5, atol=1e-6)


def test_permuting_guidance_permutes_class_maps():
    head = small_head().eval()
    feature, guidance, skips = inputs(n=5, hw=(5, 6))
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out = head(feature, guidance, skips, (20, 24))
        out_perm = head(feature, guidance[perm], skips, (20, 24))
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-4, atol=1e-5)


def test_guidance_matters_and_classes_interact():
    head = small_head().eval()
    feature, guidance, skips = inputs(n=4)
    changed = guidance.clone()
    changed[1] = torch.randn(guidance.shape[1])
    with torch.no_grad():
        out = head(feature, guidance, skips, (16, 16))
        out2 = head(feature, changed, skips, (16, 16))
    assert (out2[:, 1] - out[:, 1]).abs().max() > 1e-3
    # the other classes see the change only through the semantic transformer
    assert (out2[:, [0, 2, 3]] - out[:, [0, 2, 3]]).abs().max() > 1e-6


@pytest.mark.parametrize("n", [3, 9])
def test_number_of_classes_is_free(n):
    head = small_head().eval()
    feature, guidance, skips = inputs(n=n)
    with torch.no_grad():
        assert head(feature, guidance, skips, (32, 32)).shape == (2, n, 32, 32)


def test_skip_order_deeper_skip_feeds_stage_one():
    head = small_head(skip_dims=(20, 12))
    assert head.up1.skip_proj[0].in_channels == 12  # skips[1], the deeper block
    assert head.up2.skip_proj[0].in_channels == 20  # skips[0], the shallower block


def test_gradients_reach_guidance_and_every_parameter():
    head = small_head().train()
    feature, guidance, skips = inputs(n=3)
    guidance.requires_grad_(True)
    out = head(feature, guidance, skips, (16, 16))
    F.cross_entropy(out, torch.randint(0, 3, (2, 16, 16))).backward()
    assert guidance.grad is not None and guidance.grad.abs().sum() > 0
    missing = [name for name, p in head.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


@pytest.mark.parametrize("dim,expected", [(512, 2_217_185), (768, 2_249_953)])
def test_paper_configuration_parameter_count(dim, expected):
    head = LanguageGuidedHead(dim, dim, (768, 768))
    count = n_params(head)
    assert abs(count - 2.2e6) / 2.2e6 < 0.15, f"VLG head ({dim}) has {count} parameters, expected ~2.2 M"
    assert count == expected, f"VLG head ({dim}) has {count} parameters"


def test_paper_configuration_runs():
    head = LanguageGuidedHead(64, 64, (48, 48)).eval()  # default widths, small inputs
    feature, guidance, skips = inputs(b=1, n=6, dim=64, hw=(4, 4), skip_dims=(48, 48))
    with torch.no_grad():
        assert head(feature, guidance, skips, (64, 64)).shape == (1, 6, 64, 64)


def test_vlg_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="feature_dim == guidance_dim"):
        LanguageGuidedHead(512, 768, (768, 768))


def test_group_count_helper():
    assert gn_groups(128) == 8 and gn_groups(64) == 4 and gn_groups(32) == 2
    assert gn_groups(48) == 3 and gn_groups(8) == 1
    assert 40 % gn_groups(40, 16) == 0


@pytest.mark.parametrize("fuse_scale", [1, 4])
def test_deeplab_shape_ignores_guidance_and_gradients(fuse_scale):
    torch.manual_seed(0)
    head = DeepLabV3PlusHead(24, (20, 12), num_classes=5, channels=32, skip_channels=16,
                             fuse_scale=fuse_scale, group_size=8)
    assert head.uses_guidance is False and LanguageGuidedHead.uses_guidance is True
    feature, guidance, skips = inputs(hw=(3, 5))
    head.eval()
    with torch.no_grad():
        out_none = head(feature, None, skips, (48, 80))
        out_guided = head(feature, guidance, skips, (48, 80))
    assert out_none.shape == (2, 5, 48, 80)
    torch.testing.assert_close(out_none, out_guided)
    head.train()
    out = head(feature, None, skips, (24, 40))
    F.cross_entropy(out, torch.randint(0, 5, (2, 24, 40))).backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_deeplab_fuse_scale_none_fuses_at_the_skip_size():
    """The CNN student's low-level skip has 4x the resolution of its last map: fuse there."""
    torch.manual_seed(0)
    head = DeepLabV3PlusHead(24, (20, 12), num_classes=5, channels=32, skip_channels=16,
                             fuse_scale=None, group_size=8).eval()
    feature, _, _ = inputs(hw=(3, 5))
    skips = [torch.randn(2, 20, 12, 19), torch.randn(2, 12, 6, 10)]
    with torch.no_grad():
        assert head(feature, None, skips, None).shape == (2, 5, 12, 19)
        assert head(feature, None, skips, (50, 77)).shape == (2, 5, 50, 77)


def test_deeplab_uses_the_chosen_skip():
    torch.manual_seed(0)
    head = DeepLabV3PlusHead(24, (20, 12), num_classes=3, channels=32, group_size=8).eval()
    feature, _, skips = inputs(hw=(4, 4))
    with torch.no_grad():
        out = head(feature, None, skips, (16, 16))
        out_other = head(feature, None, [skips[0] + 1.0, skips[1] * 5], (16, 16))  # only skips[0] matters
        out_same = head(feature, None, [skips[0], skips[1] * 5], (16, 16))
    assert (out - out_other).abs().max() > 1e-5
    torch.testing.assert_close(out, out_same)
