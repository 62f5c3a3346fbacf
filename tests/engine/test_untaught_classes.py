"""The end-of-training note on classes the unlabelled terms never teach (co2s.engine.metrics_log)."""

from pytest import approx

from co2s.engine.metrics_log import untaught_class_notes, untaught_classes


def _train(step: int, **values) -> dict:
    return {"step": step, "kind": "train", **{k.replace("__", "/").replace("_by_", ":"): v for k, v in values.items()}}


def test_a_class_predicted_but_never_confident_after_the_burn_in_is_named_per_student():
    records = [
        # the burn-in: sand not confident for anyone yet; not what the note is about
        _train(10, cnn__confident_ratio=0.3, cnn__confident_ratio_by_soil=0.3, cnn__confident_ratio_by_sand=0.0,
               clip__confident_ratio=0.3, clip__confident_ratio_by_soil=0.3, clip__confident_ratio_by_sand=0.0),
        {"step": 20, "kind": "val", "mIoU": 30.0},
        _train(20, cnn__confident_ratio=0.6, cnn__confident_ratio_by_soil=0.7, cnn__confident_ratio_by_sand=0.02,
               clip__confident_ratio=0.5, clip__confident_ratio_by_soil=0.5, clip__confident_ratio_by_sand=0.4),
        _train(30, cnn__confident_ratio=0.7, cnn__confident_ratio_by_soil=0.8,  # no sand pseudo-label: no value
               clip__confident_ratio=0.5, clip__confident_ratio_by_soil=0.6, clip__confident_ratio_by_sand=0.3),
    ]
    found = untaught_classes(records, after_step=10)
    assert found == [{"student": "cnn", "class": "sand", "ratio": 0.02, "overall": approx(0.65)}]
    (note,) = untaught_class_notes(records, after_step=10)
    assert note.startswith("note: cnn's pseudo-labels of sand were confident on 2% of its pixels in the semi-supervised steps") and "65%" in note
    (with_burn_in,) = untaught_classes(records, after_step=0)  # the burn-in's records count when asked
    assert with_burn_in["ratio"] == approx(0.01) and with_burn_in["overall"] == approx(1.6 / 3)


def test_single_model_keys_and_runs_with_hardly_any_confident_pixel():
    single = [_train(5, confident_ratio=0.5, confident_ratio_by_road=0.05, confident_ratio_by_water=0.9)]
    assert [(f["student"], f["class"]) for f in untaught_classes(single)] == [(None, "road")]
    assert untaught_class_notes(single)[0].startswith("note: pseudo-labels of road were confident on 5%")
    # nothing is confident (a student still at the class prior, or tau too high): the student is named, no class
    idle = [_train(5, confident_ratio=0.01, confident_ratio_by_road=0.0, confident_ratio_by_water=0.02)]
    assert untaught_classes(idle) == [{"student": None, "class": None, "ratio": 0.01, "overall": 0.01}]
    pair = [_train(5, clip__confident_ratio=0.0, cnn__confident_ratio=0.6, cnn__confident_ratio_by_road=0.6)]
    (note,) = untaught_class_notes(pair)
    assert note.startswith("note: clip's pseudo-labels were confident on 0% of the pixels") and "taught clip" in note
    assert untaught_classes([_train(5, loss=1.0)]) == []  # a supervised run logs none of it


def test_a_class_never_pseudo_labelled_is_named_when_the_classes_are_known():
    records = [_train(5, cnn__confident_ratio=0.6, cnn__confident_ratio_by_soil=0.6, cnn__confident_ratio_by_rock=0.5)]
    assert untaught_classes(records) == []  # from the log alone a class never predicted leaves no trace
    found = untaught_classes(records, classes=["soil", "rock", "sand"])
    assert found == [{"student": "cnn", "class": "sand", "ratio": None, "overall": 0.6}]
    assert "cnn's pseudo-labels never gave sand" in untaught_class_notes(records, classes=["soil", "sand"])[0]

