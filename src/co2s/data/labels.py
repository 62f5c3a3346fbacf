"""Raw mask values to training labels: colour decoding, value remap, reduce-zero-label, checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from co2s.data.io import read_mask_labelled
from co2s.errors import DataError


@dataclass(frozen=True)
class LabelEncoder:
    """Turns a raw mask into class indices ``0..num_classes-1`` plus ``ignore_index``.

    Order of operations (the usual MMSeg semantics): colour-coded masks are decoded with the
    palette (``ignore_colors`` and unknown colours become ignore), then ``label_map`` remaps raw
    values, then ``reduce_zero_label`` maps 0 to ignore and shifts every other value down by one.
    """

    num_classes: int
    ignore_index: int = 255
    reduce_zero_label: bool = False
    label_map: dict[int, int] = field(default_factory=dict)
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_colors: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def from_config(cls, data) -> LabelEncoder:
        palette = tuple(tuple(c) for c in data.palette) if data.color_masks else None
        return cls(
            num_classes=data.num_classes,
            ignore_index=data.ignore_index,
            reduce_zero_label=data.reduce_zero_label,
            label_map=dict(data.label_map),
            palette=palette,
            ignore_colors=tuple(tuple(c) for c in data.ignore_colors),
        )

    def decode_colors(self, rgb: np.ndarray) -> np.ndarray:
        assert self.palette is not None
        codes = _color_codes(rgb)
        out = np.full(codes.shape, self.ignore_index, dtype=np.int64)
        for index, (r, g, b) in enumerate(self.palette):
            out[codes == ((r << 16) | (g << 8) | b)] = index
        return out

    def unmatched_colors(self, rgb: np.ndarray, top: int = 3) -> tuple[int, list[tuple[tuple, int]]]:
        """Pixels of a colour mask whose colour is neither in the palette nor an ignore colour
        (they silently become ignore), and the ``top`` most frequent such colours with counts."""
        assert self.palette is not None
        codes = _color_codes(rgb).ravel()
        known = np.array([(r << 16) | (g << 8) | b for r, g, b in (*self.palette, *self.ignore_colors)],
                         dtype=np.int64)
        unknown = codes[~np.isin(codes, known)]
        if unknown.size == 0:
            return 0, []
        values, counts = np.unique(unknown, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:top]
        colours = [(((int(v) >> 16) & 255, (int(v) >> 8) & 255, int(v) & 255), int(c))
                   for v, c in zip(values[order], counts[order])]
        return int(unknown.size), colours

    def encode(self, raw: np.ndarray, source: str = "mask", labelled: np.ndarray | None = None) -> np.ndarray:
        """Return int64 labels; raise :class:`DataError` naming ``source`` on invalid values.
        ``labelled``: the pixels the mask labels (:func:`~co2s.data.io.read_mask_labelled`); the
        others are ``ignore_index`` whatever their value."""
        labels = self.decode_colors(raw) if self.palette is not None else raw.astype(np.int64)
        if self.label_map:
            remapped = labels.copy()
            for src, dst in self.label_map.items():
                remapped[labels == src] = dst
            labels = remapped
        if self.reduce_zero_label:
            ignore = (labels == 0) | (labels == self.ignore_index)
            labels = labels - 1
            labels[ignore] = self.ignore_index
        if labelled is not None:
            labels[~labelled] = self.ignore_index
        self.check(labels, source)
        return labels

    def read(self, path, source: str | None = None) -> np.ndarray:
        """The labels of the mask file ``path`` (colour-coded when the encoder has a palette), its
        nodata unlabelled; errors name ``source`` (default: the file)."""
        raw, labelled = read_mask_labelled(path, color=self.palette is not None)
        return self.encode(raw, source or str(path), labelled)

    def check(self, labels: np.ndarray, source: str = "mask") -> None:
        valid = ((labels >= 0) & (labels < self.num_classes)) | (labels == self.ignore_index)
        if not valid.all():
            bad = np.unique(labels[~valid])
            shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
            hint = ""
            if self.reduce_zero_label:
                hint = " (after reduce_zero_label: raw value v became v-1)"
            raise DataError(
                f"{source}: label value(s) {shown}{hint} are neither a class index "
                f"0..{self.num_classes - 1} nor ignore_index {self.ignore_index}; "
                "check data.classes, data.reduce_zero_label and data.label_map"
            )


def _color_codes(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` colours as one int64 ``0xRRGGBB`` code per pixel."""
    return (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
