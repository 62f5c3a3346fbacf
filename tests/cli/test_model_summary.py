import json

import pytest

from co2s.cli.main import main


@pytest.mark.slow
def test_paper_pair_summary_matches_the_paper_sizes(capsys):
    """ViT-B/16 students: ~86 M backbone each, ~28 M trainable with attention-only tuning, ~2.2 M decoder."""
    assert main(["model-summary", "whdld", "--random-weights", "--json", "--input-size", "64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    students = {s["name"]: s for s in summary["students"]}
    assert set(students) == {"clip", "dino"}
    for s in students.values():
        assert 85e6 < s["backbone_total"] < 87.5e6, s
        assert 26e6 < s["backbone_trainable"] < 29.5e6, s
        assert 2.1e6 < s["decoder_total"] < 2.4e6, s
        assert s["output_shape"] == [1, 6, 64, 64]
    assert students["clip"]["guidance_total"] == 6 * 512  # frozen text prototypes
    assert students["dino"]["guidance_total"] == 6 * 768  # learnable queries


def test_tiny_pair_from_preset_list(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("preset: [demo, models/co2s-tiny]\n")
    assert main(["model-summary", str(cfg), "--input-size", "96"]) == 0
    out = capsys.readouterr().out
    assert "clip: clip (random weights), guidance text" in out and "dino: dinov3" in out
    assert "logits [1, 6, 96, 96]" in out
    # a model fragment alone is not a whole config
    assert main(["model-summary", "models/co2s-tiny"]) == 2
    assert "data: required value missing" in capsys.readouterr().err
