"""``co2s model-summary``: parameter counts and shapes of the model(s) a config builds."""

from __future__ import annotations

import torch

from co2s.models.factory import build_models


def without_weights(student_cfg):
    """The same architecture with random weights (no files needed): for sizing and timing, not training."""
    backbone = student_cfg.backbone.model_copy(update={"weights": None})
    text = student_cfg.text.model_copy(update={"prototypes": "random"})
    return student_cfg.model_copy(update={"backbone": backbone, "text": text})


@torch.no_grad()
def model_summary(config, load_weights: bool = True, input_size: int | None = None) -> dict:
    from co2s.models.student_factory import build_student

    size = input_size or config.train.crop_size
    x = torch.zeros(1, config.in_channels, size, size)
    entries = []
    if config.model.name == "students":
        for cfg in config.model.students:
            student = build_student(cfg if load_weights else without_weights(cfg), config.data,
                                    in_channels=config.in_channels).eval()
            counts = student.parameter_counts()
            features = student.extract(student.normalize(x))
            entries.append({
                "name": cfg.name, "backbone": cfg.backbone.kind, "weights": cfg.backbone.weights if load_weights else None,
                **backbone_facts(student),
                "guidance": cfg.guidance, "head": cfg.head, "tune": cfg.backbone.tune, **counts,
                "input_shape": list(x.shape),
                "feature_shapes": [list(f.shape) for f in features],
                "output_shape": list(student.decode(features, x.shape[-2:]).shape),
            })
    else:
        model = build_models(config)["model"].eval()
        total = sum(p.numel() for p in model.parameters())
        entries.append({
            "name": config.model.name, "backbone": config.model.name, "weights": None, "guidance": "none",
            "head": config.model.name, "tune": "full", "backbone_total": total, "backbone_trainable": total,
            "decoder_total": 0, "decoder_trainable": 0, "guidance_total": 0, "guidance_trainable": 0,
            "input_shape": list(x.shape), "feature_shapes": [], "output_shape": list(model(x).shape),
        })
    return {"students": entries}


def backbone_facts(student) -> dict:
    """What a student's backbone is: its weight family (None for random weights), architecture,
    activation and the normalisation of its pretrained bands, as built."""
    record = student.architecture["backbone"]
    facts = {"family": (record.get("weights") or {}).get("family"),
             "normalisation": {"mean": [round(v, 6) for v in student.mean.flatten().tolist()],
                               "std": [round(v, 6) for v in student.std.flatten().tolist()]}}
    if record["kind"] == "cnn":
        return {**facts, "architecture": dict(record["arch"]), "act": "relu"}
    arch = record["arch"].get("vision_config", record["arch"])
    facts["architecture"] = {"width": arch["hidden_size"], "depth": arch["num_hidden_layers"],
                             "heads": arch["num_attention_heads"], "patch": arch["patch_size"]}
    facts["act"] = arch.get("hidden_act")
    if record.get("weights"):
        facts["weights_record"] = record["weights"]
    return facts


def format_summary(summary: dict) -> str:
    m = lambda n: f"{n / 1e6:8.2f} M"  # noqa: E731
    lines = []
    for s in summary["students"]:
        lines.append(f"{s['name']}: {s['backbone']} ({s['weights'] or 'random weights'}), guidance "
                     f"{s['guidance']}, head {s['head']}, tuning {s['tune']}")
        if "architecture" in s:
            a, norm = s["architecture"], s["normalisation"]
            shape = (f"width {a['width']}, depth {a['depth']}, {a['heads']} heads, patch {a['patch']}"
                     if "width" in a else "cnn")
            lines.append(f"  family {s['family'] or 'none (random weights)'}: {shape}, {s['act']}, "
                         f"mean {norm['mean']}, std {norm['std']}")
        lines.append(f"  backbone {m(s['backbone_total'])} total, {m(s['backbone_trainable'])} trainable")
        lines.append(f"  decoder  {m(s['decoder_total'])}   guidance {s['guidance_total']:,} values")
        lines.append(f"  input {s['input_shape']} -> features {s['feature_shapes']} -> logits {s['output_shape']}")
    return "\n".join(lines)
