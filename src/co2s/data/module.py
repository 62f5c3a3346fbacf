"""Data modules: everything the engine and evaluation need from the data, prepared and checked in
one place, as torchgeo's data modules do. One interface, two implementations: :class:`TileData`
(list files or folders of image tiles) and :class:`SceneData` (whole rasters with sparse labels,
``data.scenes``). :func:`data_module` is the one place that tells them apart.

- :meth:`DataModule.setup_training` reads and checks the labelled split, the unlabelled one (when
  the method uses it) and validation up front (SPEC 3: bad data stops the run before training),
  counts the labelled pixels per class (``class_table``, printed when ``report``) and runs the
  label check (``data.label_check``);
- :meth:`DataModule.train_datasets` gives the weak-view labelled crops and the unlabelled pairs
  with their CutMix sources;
- :meth:`DataModule.evaluation_set` gives a split to score (:mod:`co2s.data.evaluation_sets`).
"""

from __future__ import annotations

import sys

from co2s.config.schema import CutMixConfig, StrongViewConfig
from co2s.data.dataset import LabelledCrops, UnlabelledPairs, WholeImages
from co2s.data.evaluation_sets import SceneEvaluationSet, TileEvaluationSet
from co2s.data.labels import LabelEncoder
from co2s.data.io import images_auto_scale
from co2s.data.raster import rasters_gsd
from co2s.data.sources import LabelStats, check_disjoint, check_labels, class_table, read_split, validate_samples
from co2s.data.transforms import WeakViewParams
from co2s.errors import DataError


def data_module(data, channels: int, progress: bool = True, report: bool = True) -> DataModule:
    """The data module of a data config: scenes when ``data.scenes`` is set, else tiles.
    ``channels``: the bands the model takes; ``report``: print class tables and warnings (rank 0)."""
    cls = SceneData if data.scenes is not None else TileData
    return cls(data, channels, progress, report)


def view_params(train, ignore_index: int) -> tuple[WeakViewParams, StrongViewConfig, CutMixConfig]:
    """The augmentation parameters of ``train`` (the config is their one source)."""
    return WeakViewParams.from_train(train, ignore_index), train.augment.strong, train.augment.cutmix


class DataModule:
    """The data of a run. After :meth:`setup_training`: ``labelled`` and ``unlabelled`` (None when
    the method does not use it) as the training datasets draw from them, ``val`` (an evaluation
    set, or None) and ``class_table``."""

    def __init__(self, data, channels: int, progress: bool = True, report: bool = True) -> None:
        self.data, self.channels, self.progress, self.report = data, channels, progress, report
        self.labelled = self.unlabelled = self.val = None
        self.class_table: str | None = None

    # -- shared -------------------------------------------------------------------------------
    def _print(self, text: str, err: bool = False) -> None:
        if self.report:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def _check_labels(self, stats: LabelStats, title: str = "labelled split", unit: str = "masks",
                      **words) -> None:
        """Print the class table and run the label check (``words``: its ``source`` and ``checks``)."""
        self.class_table = class_table(stats, self.data.classes, title=title, unit=unit)
        self._print(self.class_table)
        for problem in check_labels(stats, self.data.classes, self.data.label_check, self.data.max_unmatched_colors,
                                    **words):
            self._print(f"warning (data.label_check: warn): {problem}", err=True)

    def _tile_split(self, split: str, max_images: int | None = None) -> TileEvaluationSet:
        spec = getattr(self.data.splits, split, None)
        if not spec:
            scenes = (f" (or data.scenes.{split})" if split in ("val", "test") and self.data.scenes is not None
                      else "")
            raise DataError(f"data.splits.{split}{scenes} is not set; give it in the config or with --set")
        samples = read_split(spec, self.data, labelled=True, name=split)[:max_images]
        # up front, as in training: files, image sizes and band counts, mask values
        validate_samples(samples, LabelEncoder.from_config(self.data), self.data.validate_files,
                         self.data.color_masks, f"checking {split}", channels=self.channels, bands=self.data.bands)
        return TileEvaluationSet(WholeImages(samples, self.data), str(spec))

    def evaluation_set(self, split: str, max_images: int | None = None):
        """The split ``split`` to score (``max_images``: its first images only, tiles)."""
        return self._tile_split(split, max_images)

    def ground_sample_distance(self) -> float | None:
        """Metres per pixel of the training imagery (after :meth:`setup_training`): ``data.gsd``,
        else from the training rasters' georeferencing (:func:`co2s.data.raster.rasters_gsd`);
        None when neither says."""
        if self.data.gsd is not None:
            return self.data.gsd
        gsd, note = rasters_gsd(self._training_rasters())
        if note:
            self._print(f"warning: {note}", err=True)
        return gsd

    def auto_scale(self) -> float | None:
        """With ``data.scale: auto``, the number the training images were divided by (after
        :meth:`setup_training`): their data type's range, when they share one
        (:func:`co2s.data.io.images_auto_scale`); None when they differ or the scale is a number."""
        return images_auto_scale(self._training_rasters()) if self.data.scale == "auto" else None

    def _training_rasters(self) -> list:
        raise NotImplementedError

    def setup_training(self, train, uses_unlabelled: bool) -> DataModule:
        raise NotImplementedError

    def train_datasets(self, train):
        """Weak-view labelled crops and, when the method uses them, the unlabelled pairs with their
        CutMix sources: what a training step draws from."""
        raise NotImplementedError


class TileData(DataModule):
    """Image tiles from list files or folders (``data.splits``)."""

    def setup_training(self, train, uses_unlabelled: bool) -> TileData:
        data = self.data
        if not data.splits.labelled:
            raise DataError("data.splits.labelled is not set: training needs labelled samples")
        encoder = LabelEncoder.from_config(data)
        bands = {"channels": self.channels, "bands": data.bands}
        self.labelled = read_split(data.splits.labelled, data, labelled=True, name="labelled")
        stats = validate_samples(self.labelled, encoder, data.validate_files, data.color_masks,
                                 "checking labelled", **bands)
        if stats is not None:
            self._check_labels(stats)
        self.unlabelled = None
        if data.splits.unlabelled and uses_unlabelled:
            # Read only when the method trains on it (a supervised run ignores the list).
            # Masks an unlabelled list happens to give are kept only to log pseudo-label accuracy.
            self.unlabelled = read_split(data.splits.unlabelled, data, labelled=False, name="unlabelled",
                                         keep_masks=True)
            check_disjoint(self.labelled, self.unlabelled)
            validate_samples(self.unlabelled, encoder, data.validate_files, desc="checking unlabelled",
                             masks=False, **bands)
        self.val = self._tile_split("val", train.val_max_images) if data.splits.val else None
        return self

    def _training_rasters(self) -> list:
        return [sample.image for sample in self.labelled]

    def train_datasets(self, train):
        weak, strong, cutmix = view_params(train, self.data.ignore_index)
        pairs = (UnlabelledPairs(self.unlabelled, self.data, weak, strong, cutmix)
                 if self.unlabelled is not None else None)
        return LabelledCrops(self.labelled, self.data, weak), pairs


class SceneData(DataModule):
    """Whole rasters with sparse labels (``data.scenes``); validation and test regions lie on them
    (or on rasters of their own) and are never trained on."""

    def _regions(self, split: str) -> SceneEvaluationSet:
        from co2s.data.scene_regions import load_regions

        regions = load_regions(self.data, split, self.channels, progress=self.progress and self.report)
        self._print(class_table(regions.stats(), self.data.classes, title=f"{'validation' if split == 'val' else split} "
                                "scene pixels", unit="rasters"))
        return SceneEvaluationSet(regions, f"data.scenes.{split}: {regions.label_source}")

    def evaluation_set(self, split: str, max_images: int | None = None):
        """Regions of scenes (``data.scenes.<split>``), else a tile split of the same name."""
        if split in ("val", "test") and getattr(self.data.scenes, split) is not None:
            return self._regions(split)
        return self._tile_split(split, max_images)

    def setup_training(self, train, uses_unlabelled: bool) -> SceneData:
        from co2s.data.scenes import load_scenes, scene_pools

        data = self.data
        scenes = load_scenes(data, self.channels, progress=self.progress and self.report)
        labels, rasters = data.scenes.labels, f"{len(scenes.scenes)} raster(s)"
        if labels.vector is not None:  # the words of the source: polygons of a file, or masks
            words = {"source": f"the polygons of {scenes.label_source} on {rasters}",
                     "checks": f"data.classes and the attribute {labels.attribute!r} of the polygons (a "
                               "polygon on nodata labels nothing: a warning names such polygons)"}
        else:
            words = {"source": f"the masks {scenes.label_source} on {rasters}",
                     "checks": "data.classes, data.label_map and data.reduce_zero_label, or the masks"}
        self._check_labels(scenes.stats(), title="labelled scene pixels", unit="rasters", **words)
        self._scenes = scenes
        self.labelled, unlabelled = scene_pools(scenes, data, train.crop_size)
        self.unlabelled = unlabelled if uses_unlabelled else None
        if data.scenes.val is not None:
            self.val = self._regions("val")
        else:
            self.val = self._tile_split("val", train.val_max_images) if data.splits.val else None
        return self

    def _training_rasters(self) -> list:
        return [scene.path for scene in self._scenes.scenes]

    def train_datasets(self, train):
        from co2s.data.scenes import LabelledSceneCrops, UnlabelledScenePairs

        weak, strong, cutmix = view_params(train, self.data.ignore_index)
        pairs = UnlabelledScenePairs(self.unlabelled, weak, strong, cutmix) if self.unlabelled is not None else None
        return LabelledSceneCrops(self.labelled, weak), pairs
