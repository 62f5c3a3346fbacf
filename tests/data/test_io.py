import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from co2s.data.io import read_image, read_mask, save_index_png
from co2s.data.raster import RasterReader, scale_image
from co2s.errors import DataError


def _geotiff(path, array, crs="EPSG:32633"):
    bands, h, w = array.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=bands, dtype=array.dtype,
                       crs=crs, transform=from_origin(500000, 4000000, 10, 10)) as dst:
        dst.write(array)


def test_png_jpeg_and_grey(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb.transpose(2, 0, 1))
    assert read_image(tmp_path / "a.jpg").shape == (3, 20, 30)
    assert np.array_equal(read_image(tmp_path / "g.png"), rgb[None, ..., 0])
    assert np.array_equal(read_image(tmp_path / "a.png", bands=[3, 1]), rgb.transpose(2, 0, 1)[[2, 0]])


@pytest.mark.parametrize("dtype,scale", [(np.uint16, 65535.0), (np.float32, 1.0), (np.uint8, 255.0)])
def test_multiband_geotiff(tmp_path, dtype, scale):
    array = (np.random.default_rng(1).random((5, 16, 24)) * 1000).astype(dtype)
    _geotiff(tmp_path / "s.tif", array)
    got = read_image(tmp_path / "s.tif")
    assert got.dtype == dtype and np.array_equal(got, array)
    assert np.array_equal(read_image(tmp_path / "s.tif", bands=[4, 2]), array[[3, 1]])
    np.testing.assert_allclose(scale_image(got), array.astype(np.float32) / scale, rtol=1e-6)
    with pytest.raises(DataError, match=r"s\.tif: has 5 band\(s\), config selects band\(s\) \[6\]"):
        read_image(tmp_path / "s.tif", bands=[1, 6])


def test_masks_palette_index_and_colour(tmp_path):
    idx = np.random.default_rng(2).integers(0, 4, (10, 12), dtype=np.uint8)
    palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]]
    save_index_png(tmp_path / "m.png", idx, palette)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P"
    assert np.array_equal(read_mask(tmp_path / "m.png"), idx)  # indices, not colours
    colours = read_mask(tmp_path / "m.png", color=True)
    assert np.array_equal(colours, np.asarray(palette, np.uint8)[idx])
    Image.fromarray(colours).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png is a RGB image.*color_masks"):
        read_mask(tmp_path / "rgb.png")
    _geotiff(tmp_path / "m.tif", idx[None])
    assert np.array_equal(read_mask(tmp_path / "m.tif"), idx)


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "fake.tif").write_text("not a raster")
    with pytest.raises(DataError, match=r"cannot read image .*fake\.png"):
        read_image(tmp_path / "fake.png")
    with pytest.raises(DataError, match=r"cannot read raster .*fake\.tif"):
        read_image(tmp_path / "fake.tif")
    with pytest.raises(DataError, match=r"image not found: .*nope\.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match=r"mask not found"):
        read_mask(tmp_path / "nope.png")


def _png16(path, array):
    """A 16-bit PNG written from the PNG specification (IHDR, one zlib IDAT, IEND; big-endian
    samples, filter 0 per row), as cameras and GIS exports write them: not through Pillow, which
    cannot write 16-bit colour, nor GDAL, which reads it back."""
    import struct
    import zlib

    h, w, bands = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[bands]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("bands", [3, 4, 2])  # RGB, RGBA, grey + alpha
def test_16_bit_colour_png_keeps_every_bit(tmp_path, bands):
    """Pillow reads a 16-bit colour PNG as 8-bit (the low byte of each value dropped silently); the
    reader gives the stored 16-bit values, and the header queries agree with it."""
    from co2s.data.io import image_dtype, image_header, read_model_input

    array = np.random.default_rng(3).integers(0, 65536, (9, 11, bands), dtype=np.uint16)
    array[0, 0] = 0x0102  # differs from its 8-bit reading in the low byte only
    _png16(tmp_path / "d.png", array)
    with Image.open(tmp_path / "d.png") as img:  # what went wrong: Pillow's reading
        assert not np.array_equal(np.asarray(img), array)
    got = read_image(tmp_path / "d.png")
    assert got.dtype == np.uint16 and np.array_equal(got, array.transpose(2, 0, 1))
    assert image_dtype(tmp_path / "d.png") == np.uint16
    colour = bands - (bands % 2 == 0)  # RGBA, grey + alpha: the alpha is the validity, not a band
    assert image_header(tmp_path / "d.png") == (9, 11, colour)
    image, _ = read_model_input(tmp_path / "d.png", bands=list(range(1, colour + 1)))
    alpha = array[..., -1] if colour < bands else np.ones(array.shape[:2])
    expected = array[..., :colour].transpose(2, 0, 1) / 65535.0 * (alpha > 0)
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    assert np.array_equal(read_image(tmp_path / "d.png", bands=[2]), array.transpose(2, 0, 1)[[1]])


def test_16_bit_grey_png_still_reads_whole(tmp_path):
    array = np.random.default_rng(4).integers(0, 65536, (7, 5, 1), dtype=np.uint16)
    _png16(tmp_path / "g.png", array)
    assert np.array_equal(read_image(tmp_path / "g.png"), array.transpose(2, 0, 1))


@pytest.mark.parametrize("orientation, upright", [
    (3, lambda a: a[::-1, ::-1]),  # rotated 180
    (6, lambda a: np.rot90(a, -1)),  # the camera held upright: viewers turn it 90 degrees clockwise
    (8, lambda a: np.rot90(a, 1)),
])
def test_a_photo_reads_upright_as_its_exif_orientation_says(tmp_path, orientation, upright):
    """Phones, cameras and drones store the pixels as the sensor read them and an EXIF orientation
    tag; viewers and labelling tools (labelme, CVAT, OpenCV) show it turned. The mask drawn on the
    shown image must meet the image as shown."""
    from co2s.data.io import image_header

    stored = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "p.png", exif=exif)  # lossless: exact pixels
    Image.fromarray(stored).save(tmp_path / "p.jpg", exif=exif, quality=95)
    shown = upright(stored)
    assert np.array_equal(read_image(tmp_path / "p.png"), shown.transpose(2, 0, 1))
    assert read_image(tmp_path / "p.jpg").shape == shown.transpose(2, 0, 1).shape
    assert image_header(tmp_path / "p.jpg") == (*shown.shape[:2], 3)
    index = stored[..., 0] % 4
    Image.fromarray(index).save(tmp_path / "m.png", exif=exif)
    assert np.array_equal(read_mask(tmp_path / "m.png"), upright(index))


def test_a_georeferenced_photo_turned_by_exif_is_refused_not_read_two_ways(tmp_path):
    """GDAL (and a world file) place a JPEG's pixels as stored, Pillow turns them upright: a
    georeferenced photo with an EXIF turn would be trained on one way and predicted the other."""
    from co2s.data.raster import RasterReader

    stored = np.random.default_rng(6).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for orientation in (1, 6):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(tmp_path / f"o{orientation}.jpg", exif=exif, quality=95)
        (tmp_path / f"o{orientation}.jgw").write_text("0.5\n0\n0\n-0.5\n1000\n2000\n")
    with RasterReader(tmp_path / "o1.jpg") as reader:
        assert (reader.height, reader.width) == (20, 30)
    with pytest.raises(DataError, match=r"o6\.jpg: EXIF orientation 6 .* on a georeferenced image"):
        RasterReader(tmp_path / "o6.jpg")
    (tmp_path / "o6.jgw").unlink()  # a plain photo given to scene prediction: the same refusal, its own reason
    with pytest.raises(DataError, match=r"o6\.jpg: EXIF orientation 6 .* tile training turns it upright") as refused:
        RasterReader(tmp_path / "o6.jpg")
    assert "georeferenc" not in str(refused.value).split("o6.jpg:")[1]


def test_lossy_masks_are_refused(tmp_path):
    """A mask saved as JPEG (or a JPEG-compressed TIFF) has its class values changed where classes
    meet, into other valid classes: label noise no range check finds. It is refused, by content."""
    index = np.zeros((32, 32), np.uint8)
    index[:, 16:] = 2
    Image.fromarray(index).save(tmp_path / "m.jpg", quality=75)
    Image.fromarray(index).save(tmp_path / "named.png", format="JPEG")  # a JPEG behind a .png name
    with rasterio.open(tmp_path / "m.tif", "w", driver="GTiff", height=32, width=32, count=1, dtype="uint8",
                       compress="jpeg") as dst:
        dst.write(index[None])
    for name, said in (("m.jpg", "is a JPEG"), ("named.png", "is a JPEG"), ("m.tif", "is JPEG-compressed")):
        with pytest.raises(DataError, match=rf"mask .*{name} {said}: lossy compression changes class values"):
            read_mask(tmp_path / name)
    assert read_image(tmp_path / "m.jpg").shape == (1, 32, 32)  # as an image it is fine


def test_an_alpha_band_is_the_validity_not_a_band(tmp_path):
    """RGBA PNGs (QGIS exports), grey + alpha, and GeoTIFFs from ``gdalwarp -dstalpha``: read with
    data.bands unset, the model gets the colour bands, and the pixels of alpha 0 are invalid (0 in
    the input, ignored in scores, nodata in outputs), as GIS software shows them: transparent."""
    from co2s.data.io import image_header, read_model_input

    rgba = np.random.default_rng(6).integers(1, 256, (8, 10, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:3, :, 3] = 0  # the warped scene's empty corner
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]]).save(tmp_path / "la.png")
    with rasterio.open(tmp_path / "warped.tif", "w", driver="GTiff", height=8, width=10, count=4, dtype="uint8",
                       photometric="RGB", alpha="YES") as dst:  # as gdalwarp -dstalpha writes it
        dst.write(rgba.transpose(2, 0, 1))
    for name, colour in (("rgba.png", [0, 1, 2]), ("la.png", [0]), ("warped.tif", [0, 1, 2])):
        with pytest.warns(UserWarning, match=r"alpha band .* not as a band of model input; set data.bands"):
            assert image_header(tmp_path / name) == (8, 10, len(colour)), name
        image, valid = read_model_input(tmp_path / name)
        assert valid is not None and valid.tolist() == (rgba[..., 3] > 0).tolist(), name
        stored = rgba[..., colour] if name != "la.png" else rgba[..., :1]
        np.testing.assert_allclose(image, stored.transpose(2, 0, 1) / 255.0 * valid, rtol=1e-6)
    assert read_image(tmp_path / "rgba.png").shape == (4, 8, 10)  # the stored values: every band
    image, valid = read_model_input(tmp_path / "rgba.png", bands=[1, 2, 3, 4])  # chosen explicitly: a band
    assert image.shape == (4, 8, 10)
    # GDAL tags the 4th band of a 4-band 8-bit GeoTIFF written without PHOTOMETRIC as alpha: an RGB+NIR
    # file written so, read for a 4-band model, says why it has 3 bands and how to read the 4th.
    with rasterio.open(tmp_path / "rgbn.tif", "w", driver="GTiff", height=8, width=10, count=4,
                       dtype="uint8") as dst:
        dst.write(rgba.transpose(2, 0, 1))
    with pytest.raises(DataError, match=r"rgbn.tif: has 3 band\(s\) \(and 1 alpha band\(s\), read as which pixels "
                                        r"hold data\) but the model was trained on 4 \(see data.bands\)"):
        RasterReader(tmp_path / "rgbn.tif", channels=4)
    with RasterReader(tmp_path / "rgbn.tif", bands=[1, 2, 3, 4], channels=4) as reader:
        assert reader.bands == [1, 2, 3, 4]


@pytest.mark.parametrize("mode", ["P", "P-table", "L", "I;16", "RGB"])
def test_png_transparency_marks_invalid_pixels_as_gdal_reads_them(tmp_path, mode):
    """A PNG's tRNS chunk (a transparent palette entry, grey level or colour: how scanned maps,
    palette exports and many web tiles mark no data) makes those pixels invalid, as GDAL reads them
    (its nodata mask is the reference here) and as viewers show them; read as colours they would
    pass as valid."""
    from co2s.data.io import read_model_input

    index = np.random.default_rng(7).integers(0, 4, (6, 9)).astype(np.uint8)
    path = tmp_path / "t.png"
    if mode.startswith("P"):
        img = Image.fromarray(index, "P")
        img.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200])
        # one transparent index, or an alpha table (index 2 half transparent: still data)
        img.save(path, transparency=0 if mode == "P" else bytes([0, 255, 128, 255]))
    elif mode == "RGB":
        Image.fromarray(np.stack([index * 60, index * 50, index * 40], -1)).save(path, transparency=(0, 0, 0))
    else:
        Image.fromarray(index.astype(np.uint16 if mode == "I;16" else np.uint8) * 60).save(path, transparency=0)
    image, valid = read_model_input(path)
    with rasterio.open(path) as src:
        gdal_valid = src.dataset_mask() > 0
    assert valid is not None and valid.tolist() == (index != 0).tolist() == gdal_valid.tolist()
    assert (image[:, ~valid] == 0).all() and image[:, valid].any()
    assert read_image(path).shape[0] == (3 if mode.startswith("P") else image.shape[0])  # values as stored


def test_a_large_image_reads_where_pillow_would_stop_it_as_a_bomb(tmp_path, monkeypatch):
    """Pillow refuses images above 179 Mpx (a 200 Mpx phone photo, a 14,000 px orthophoto export)
    with an exception of its own; co2s reads them up to its own bound, and leaves Pillow's bound as
    it was. The real size is checked on a header (14,000 px square); the reads at a lowered bound."""
    from co2s.data.io import image_header, read_model_input

    big = tmp_path / "ortho.png"
    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS
    try:
        Image.fromarray(np.zeros((14000, 14000), np.uint8)).save(big)  # 196 Mpx, 190 kB
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with pytest.raises(Image.DecompressionBombError):
        Image.open(big)
    assert image_header(big) == (14000, 14000, 1)

    rgb = np.random.default_rng(8).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(rgb[..., 0] % 4).save(tmp_path / "mask.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3000 px is over twice it: Pillow's error
    for name in ("photo.jpg", "photo.png"):
        image, _ = read_model_input(tmp_path / name)
        assert image.shape == (3, 50, 60)
    np.testing.assert_allclose(read_model_input(tmp_path / "photo.png")[0], rgb.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), rgb[..., 0] % 4)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_an_image_too_large_to_read_whole_is_refused_in_one_line(tmp_path, monkeypatch):
    """Above co2s's bound an image is refused before it is decoded, naming the file, its size and
    what to do (read it as a scene); its header still reads (the data checks list sizes)."""
    from co2s.config import limits
    from co2s.data.io import image_header, read_model_input

    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "photo.png")
    _geotiff(tmp_path / "tile.tif", np.zeros((3, 50, 60), np.uint16))
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(tmp_path / "mask.png")
    monkeypatch.setattr(limits, "MAX_WHOLE_IMAGE_PIXELS", 2999)
    for name in ("photo.png", "tile.tif"):
        with pytest.raises(DataError, match=rf"image .*{name} is 60 x 50 px \(0 Mpx\), more than the 0 Mpx co2s "
                                            r"reads whole; .* as a scene: convert it to GeoTIFF"):
            read_model_input(tmp_path / name)
        assert image_header(tmp_path / name) == (50, 60, 3)
    with pytest.raises(DataError, match=r"mask .*mask.png is 60 x 50 px"):
        read_mask(tmp_path / "mask.png")
    monkeypatch.setattr(limits, "MAX_WHOLE_IMAGE_PIXELS", 3000)
    assert read_model_input(tmp_path / "tile.tif")[0].shape == (3, 50, 60)
