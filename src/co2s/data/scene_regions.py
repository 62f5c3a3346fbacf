"""Validation and test regions of scenes (``data.scenes.val`` / ``data.scenes.test``).

A region source is a vector file of held-out polygons with their classes (the scored pixels are
those inside them, rasterised per window exactly as training labels are), raster masks (their
labelled pixels), or whole rasters with their labels (``rasters`` + either). By default the
regions lie on the training scenes (``data.scenes.rasters``).

- :func:`load_regions` checks a split's rasters and labels up front, like :func:`load_scenes`
  (files, CRSs, bands, classes, features or masks outside every raster) and counts its labelled
  valid pixels per 256 x 256 block: a :class:`SceneSet` whose blocks locate the regions. Scoring
  (:mod:`co2s.evaluation.scenes`) predicts the windows around them.
- :func:`attach_held_out` puts the validation and test regions on the training scenes, so that
  training never sees their labels nor draws unlabelled crops from them (:meth:`Scene.labels_of`,
  :meth:`Scene.held_out_mask`); training polygons that overlap them are reported.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from co2s.data.labels import LabelEncoder
from co2s.data.raster import Window
from co2s.data.scene_labels import MaskLabels, VectorLabels, VectorSceneLabels, mask_extent, parse_crs
from co2s.data.scene_set import (
    Scene,
    SceneSet,
    attach_labels,
    expand_paths,
    index_labels,
    open_scene,
    vector_file,
    within,
)
from co2s.errors import DataError

SPLITS = ("val", "test")


def _regions_config(data, split: str):
    if split not in SPLITS:
        raise DataError(f"scene regions are val or test, not {split!r}")
    regions = None if data.scenes is None else getattr(data.scenes, split)
    if regions is None:
        raise DataError(f"data.scenes.{split} is not set")
    return regions


def _rasters_key(regions, split: str) -> str:
    return f"data.scenes.{split}.rasters" if regions.rasters is not None else "data.scenes.rasters"


def region_rasters(data, split: str, root: Path) -> list[Path]:
    """The rasters the regions of ``split`` lie on."""
    regions = _regions_config(data, split)
    return expand_paths(regions.rasters or data.scenes.rasters, root, _rasters_key(regions, split))


def load_regions(data, split: str, channels: int | None = None, progress: bool = True) -> SceneSet:
    """Open and check the rasters and labels of ``data.scenes.<split>`` and count their labelled
    valid pixels (a :class:`DataError` names the file, and feature ids, of the first problem)."""
    regions = _regions_config(data, split)
    root = Path(data.root).expanduser()
    scenes = [open_scene(p, data, channels) for p in region_rasters(data, split, root)]
    key = f"data.scenes.{split}"
    source, _ = attach_labels(scenes, regions, data, root, key, _rasters_key(regions, split),
                              regions.attribute or data.scenes.labels.attribute)
    found = index_labels(scenes, data.num_classes, data.ignore_index, source, progress)
    if found.labelled_pixels == 0:
        raise DataError(f"{key} ({source}): no labelled pixel with data in any of its rasters "
                        f"({', '.join(s.path.name for s in scenes[:5])}): regions over nodata only?")
    return found


def attach_held_out(scenes: list[Scene], data, root: Path, train_vector: VectorLabels | None = None) -> None:
    """Put the validation and test regions on the training ``scenes`` (``Scene.held_out``): their
    pixels are ignore in the training labels and never part of an unlabelled crop. Regions given
    on other rasters are placed on the training scenes by their coordinates too (a raster of
    the same area is held out there as well). Training polygons overlapping held-out polygons are
    reported with a warning (their overlap is not trained on)."""
    import shapely

    encoder = LabelEncoder.from_config(data)
    for split in SPLITS:
        regions = getattr(data.scenes, split)
        if regions is None:
            continue
        key = f"data.scenes.{split}"
        own = {p.resolve() for p in region_rasters(data, split, root)}
        if regions.vector is not None:
            vector = VectorLabels(vector_file(root, regions.vector), regions.layer,
                                  regions.attribute or data.scenes.labels.attribute, list(data.classes),
                                  data.ignore_index, regions.where, key, regions.repair)
            fill = data.classes.index(regions.background) if regions.complete else data.ignore_index
            for scene in scenes:
                try:
                    pixels = vector.in_pixels(parse_crs(scene.crs, f"raster {scene.path}"), scene.transform,
                                              f"raster {scene.path}")
                except DataError:
                    if regions.rasters is None:
                        raise
                    continue  # regions on other rasters, too far away to be placed on this one
                here = shapely.intersects(pixels, shapely.box(0, 0, scene.width, scene.height))
                here &= vector.values != data.ignore_index
                scene_fill = fill if scene.path.resolve() in own else data.ignore_index
                if here.any() or scene_fill != data.ignore_index:
                    scene.held_out.append(VectorSceneLabels(pixels[here], vector.values[here], scene_fill,
                                                            data.ignore_index))
            if train_vector is not None:
                _report_overlaps(train_vector, vector, key)
        else:
            masks = expand_paths(regions.raster, root, f"{key}.raster")
            for scene in scenes:
                here = [m for m in masks if within(mask_extent(m, scene.grid, f"raster {scene.path}")[1], scene)]
                if here:
                    scene.held_out.append(MaskLabels(here, scene.grid, encoder, f"raster {scene.path}"))


def _report_overlaps(train: VectorLabels, held: VectorLabels, key: str) -> None:
    """Warn about training polygons that overlap held-out ones (in the training file's CRS)."""
    import shapely
    from affine import Affine

    if train.path.resolve() == held.path.resolve() and train.layer == held.layer and train.where == held.where:
        raise DataError(f"{key} reads the same features as data.scenes.labels ({train.path}, layer "
                        f"{train.layer}): split them (co2s splits, or a `where` filter on each)")
    mine = held.in_pixels(train.crs, Affine.identity(), f"vector file {train.path}")
    tree = shapely.STRtree(mine)
    pairs = tree.query(train.geoms, predicate="intersects")
    if pairs.size == 0:
        return
    areas = shapely.area(shapely.intersection(train.geoms[pairs[0]], mine[pairs[1]]))
    overlapping = sorted({int(train.fids[i]) for i, a in zip(pairs[0], areas) if a > 0})
    if overlapping:
        shown = ", ".join(map(str, overlapping[:8])) + (" ..." if len(overlapping) > 8 else "")
        warnings.warn(f"{train.path}: feature id(s) {shown} overlap held-out regions of {key} ({held.path}); "
                      "their overlap is not trained on", stacklevel=2)


def region_extent(found: SceneSet, scene: int) -> Window | None:
    """The scene pixels covering every labelled block of one scene, None when it has none."""
    origins = found.block_origin[found.block_scene == scene]
    if len(origins) == 0:
        return None
    s = found.scenes[scene]
    x0, y0 = (int(v) for v in origins.min(0))
    x1 = min(s.width, int(origins[:, 0].max()) + found.block)
    y1 = min(s.height, int(origins[:, 1].max()) + found.block)
    return Window.from_bounds(x0, y0, x1, y1)

