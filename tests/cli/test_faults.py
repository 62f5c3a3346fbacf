"""Every fault a user or the machine causes ends in one line ``error: ...`` on stderr, no
traceback, and an exit code: 1 for the machine (a full or read-only disk, permissions, memory),
2 for the user's command, config, data or checkpoint, 130 for an interrupt; a bug prints its
traceback and exit code 3; ``--debug`` (or ``CO2S_DEBUG=1``) adds the traceback to any error.
Files that existed before a failed command are unchanged, and a write cut short leaves neither a
partial file nor a temporary. Faults are injected at the real write calls (torch.save, Pillow,
GDAL, safetensors, the text writer), and written for real to /dev/full and to a small full tmpfs
where this machine lets the tests mount one."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image
from rasterio.transform import from_origin

from co2s import api
from co2s.cli.main import main
from co2s.config.loader import validate
from co2s.engine.checkpoint import write_model_checkpoint
from co2s.models.factory import build_models
from co2s.models.loading import read_checkpoint
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) and the hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def added(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The files a command added; every file that existed before is unchanged."""
    assert {k: after.get(k) for k in before} == before, "a file that existed before changed or vanished"
    return sorted(set(after) - set(before))


def leftovers(folder: Path) -> list[str]:
    """Temporaries and partial files of interrupted writes (``.name.tmp``, ``.name.<pid>.tmp``,
    ``.name.partial``) under ``folder``."""
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".partial")))


def error_line(capsys, argv: list[str], code: int, *needles: str) -> str:
    """Run the CLI: it must exit with ``code`` and write exactly one stderr line, ``error: ...``,
    holding every needle, and no traceback."""
    capsys.readouterr()
    got = main([*map(str, argv)])
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def model(tiny_dataset, tmp_path):
    """An untrained tiny model's checkpoint in its run folder, and the run's config file."""
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run")
    cfg["eval"]["window"] = 32
    torch.manual_seed(0)
    config = validate(cfg)
    (tmp_path / "run").mkdir()
    ckpt = write_model_checkpoint(tmp_path / "run" / "best.ckpt", config, build_models(config))
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    return ckpt, config_file


def image(path: Path, size=(40, 44)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def scene(path: Path, size=(40, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(1).integers(1, 255, (3, *size), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=size[0], width=size[1], count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000.0, 5000000.0, 10.0, 10.0)) as dst:
        dst.write(data)
    return path


def predict(ckpt, *args) -> list[str]:
    return ["predict", "--checkpoint", str(ckpt), *map(str, args), "--no-progress", "--device", "cpu"]


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write reports it: no file name


def raising(exc: BaseException):
    def fail(*_args, **_kwargs):
        raise exc
    return fail


class _Foreign:  # pickled by reference: torch.load(weights_only=True) refuses to rebuild it
    pass


# -- a full disk at each real write call ----------------------------------------------------------


def test_full_disk_at_a_checkpoint_keeps_the_last_one(tiny_dataset, tmp_path, monkeypatch, capsys):
    """torch.save fails half-way through the checkpoint of step 4: the command stops naming
    latest.ckpt (not its temporary), the one of step 2 is intact, nothing is left half-written."""
    run = tmp_path / "run"
    cfg = tiny_config_dict(tiny_dataset, run, iters=4, ckpt_every=2, val_every=100)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    data_before = tree(tiny_dataset)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj.get("step") != 4:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04" + bytes(4096))  # the first bytes reach the disk, then it is full
        disk_full()

    monkeypatch.setattr(torch, "save", save)
    error_line(capsys, ["train", tmp_path / "run.yaml", "--no-progress"], 1,
               f"error: cannot write {run / 'latest.ckpt'}: no space left on device")
    assert read_checkpoint(run / "latest.ckpt")["step"] == 2
    assert leftovers(tmp_path) == []
    assert tree(tiny_dataset) == data_before


def test_full_disk_at_a_png_prediction_keeps_the_earlier_one(model, tmp_path, monkeypatch, capsys):
    ckpt, _ = model
    tile = image(tmp_path / "tiles" / "a.png")
    out = tmp_path / "pred"
    assert main(predict(ckpt, tile, "--out", out)) == 0
    before = tree(tmp_path)
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG\r\n")  # the start of the file, then the disk is full
        disk_full()

    monkeypatch.setattr(Image.Image, "save", save)
    error_line(capsys, predict(ckpt, tile, "--out", out, "--overwrite"), 1,
               f"error: cannot write {out / 'a.png'}: no space left on device")
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert tree(tmp_path) == before and leftovers(tmp_path) == []


def test_full_disk_at_a_geotiff_prediction_leaves_no_partial_file(model, tmp_path, monkeypatch, capsys):
    """GDAL's error says only "Write failed": the file system is asked (here: it reports no free
    block), and the temporary ``.x_classes.tif.partial`` is removed."""
    from rasterio.errors import RasterioIOError
    from rasterio.io import DatasetWriter

    ckpt, _ = model
    raster = scene(tmp_path / "scenes" / "x.tif")
    out = tmp_path / "pred"
    before = tree(tmp_path)
    real_statvfs, real_write = os.statvfs, DatasetWriter.write

    def write(self, *args, **kwargs):
        real_write(self, *args, **kwargs)
        raise RasterioIOError("Write failed. See previous exception for details.")

    def statvfs(path):
        st = real_statvfs(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, *st[5:]))

    monkeypatch.setattr(DatasetWriter, "write", write)
    monkeypatch.setattr(os, "statvfs", statvfs)
    error_line(capsys, predict(ckpt, raster, "--out", out, "--confidence"), 1,
               f"error: cannot write {out / 'x_classes.tif'}: no space left on device")
    assert tree(tmp_path) == before and leftovers(tmp_path) == []

    # with room on the disk, GDAL's failure is that input's error; its cause is named
    monkeypatch.setattr(os, "statvfs", real_statvfs)
    capsys.readouterr()
    assert main(predict(ckpt, raster, "--out", out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write {out / 'x_classes.tif'}: Write failed")
    assert tree(tmp_path) == before and leftovers(tmp_path) == []


def test_sigterm_during_a_scene_keeps_the_finished_outputs_and_leaves_no_partial_file(model, tmp_path,
                                                                                    monkeypatch, capsys):
    """A scheduler's pre-emption (SIGTERM) stops ``co2s predict`` as Ctrl-C does: exit 143 in one
    line, the scenes already written kept, the one being written removed whole."""
    import signal

    from co2s.inference.scene import SceneOutputs

    ckpt, _ = model
    first, second = scene(tmp_path / "scenes" / "a.tif"), scene(tmp_path / "scenes" / "b.tif")
    out = tmp_path / "pred"
    real_write = SceneOutputs.write_rows

    def write_rows(self, window, *args):
        if self.final["classes"].name == "b_classes.tif":
            os.kill(os.getpid(), signal.SIGTERM)  # as the second scene is being written
        return real_write(self, window, *args)

    monkeypatch.setattr(SceneOutputs, "write_rows", write_rows)
    error_line(capsys, predict(ckpt, first, second, "--out", out), 143, "error: terminated (SIGTERM)")
    assert sorted(p.name for p in out.iterdir()) == ["a_classes.tif"] and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back


def test_full_disk_at_the_polygons_leaves_no_partial_file(model, tmp_path, monkeypatch, capsys):
    """GDAL (through pyogrio) fails writing the GeoPackage: one line naming it and the full disk;
    none of the scene's outputs (the class raster was complete) is left, nor a temporary."""
    import pyogrio.raw
    from pyogrio.errors import DataSourceError

    ckpt, _ = model
    raster = scene(tmp_path / "scenes" / "x.tif")
    out = tmp_path / "pred"
    before = tree(tmp_path)
    real_statvfs, real_write = os.statvfs, pyogrio.raw.write

    def write(path, *args, **kwargs):
        real_write(path, *args, **kwargs)
        raise DataSourceError("sqlite3_exec(COMMIT) failed: database or disk is full")

    def statvfs(path):
        st = real_statvfs(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, *st[5:]))

    monkeypatch.setattr(pyogrio.raw, "write", write)
    monkeypatch.setattr(os, "statvfs", statvfs)
    error_line(capsys, predict(ckpt, raster, "--out", out, "--polygons"), 1,
               f"error: cannot write {out / 'x_polygons.gpkg'}: no space left on device")
    assert tree(tmp_path) == before and leftovers(tmp_path) == []


def test_read_only_disk_at_the_metrics_file_keeps_the_old_one(model, tmp_path, monkeypatch, capsys):
    """The temporary cannot even be created: the message names metrics_test.json, not it."""
    ckpt, _ = model
    assert main(["evaluate", "--checkpoint", str(ckpt), "--no-progress", "--device", "cpu"]) == 0
    before = tree(tmp_path)

    def write_text(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "write_text", write_text)
    error_line(capsys, ["evaluate", "--checkpoint", ckpt, "--no-progress", "--device", "cpu", "--overwrite"], 1,
               f"error: cannot write {ckpt.parent / 'metrics_test.json'}: read-only file system")
    monkeypatch.undo()
    assert tree(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("fault, words", [
    ("full", "no space left on device"),
    ("denied", "permission denied"),
])
def test_failed_export_keeps_the_earlier_model_folder(model, tmp_path, monkeypatch, capsys, fault, words):
    """safetensors (Rust) words a full disk "(os error 28)"; a refused open is a PermissionError."""
    import safetensors.torch
    from safetensors import SafetensorError

    ckpt, _ = model
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    before = tree(tmp_path)

    def save_file(tensors, filename, metadata=None):
        if fault == "denied":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), filename)
        Path(filename).write_bytes(b"\x08\x00\x00\x00")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    verb = "cannot write" if fault == "full" else "cannot access"
    error_line(capsys, ["export", "--checkpoint", ckpt, "--out", out], 1,
               f"error: {verb} {out / 'model.safetensors'}: {words}")
    assert tree(tmp_path) == before and leftovers(tmp_path) == []


# -- faults of the environment, by errno: one line naming the file ---------------------------------


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "cannot write some/file: no space left on device"),
    (errno.EDQUOT, "cannot write some/file: disk quota exceeded"),
    (errno.EROFS, "cannot write some/file: read-only file system"),
    (errno.EACCES, "cannot access some/file: permission denied"),
    (errno.EPERM, "cannot access some/file: operation not permitted"),
    (errno.ENOENT, "cannot find some/file: no such file or folder"),
    (errno.EISDIR, "cannot use some/file: it is a folder, not a file"),
    (errno.ENOTDIR, "cannot use some/file: a part of its path is a file, not a folder"),
    (errno.EMFILE, "cannot open some/file: too many open files"),
    (errno.EIO, "cannot read or write some/file: input/output error"),
])
def test_each_os_error_is_one_line_naming_the_file(monkeypatch, capsys, code, words):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "some/file")

    monkeypatch.setattr(api, "presets", fail)
    error_line(capsys, ["presets"], 1, f"error: {words}")


def test_an_os_error_without_a_file_says_where_it_was_raised(monkeypatch, capsys):
    def fail(*args, **kwargs):  # as multiprocessing's fd sharing fails once the sending worker is gone
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))

    monkeypatch.setattr(api, "presets", fail)
    error_line(capsys, ["presets"], 1, "error: no such file or folder (raised in cli/test_faults.py; "
                                       "--debug shows the traceback)")


def test_memory_interrupt_and_bug(monkeypatch, capsys):
    for fault in (MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: "
                                              "can't allocate memory: you tried to allocate 99 bytes.")):
        monkeypatch.setattr(api, "presets", raising(fault))
        assert "try a smaller batch size" in error_line(capsys, ["presets"], 1, "error: ", "memory")
    monkeypatch.setattr(api, "presets", raising(KeyboardInterrupt()))
    assert error_line(capsys, ["presets"], 130) == "error: interrupted"

    # a bug: its traceback is needed, and the last line says what to do with it
    monkeypatch.setattr(api, "presets", lambda: {}["no such key"])
    capsys.readouterr()
    assert main(["presets"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1].startswith("error: internal error (KeyError: 'no such key'): a bug in co2s")
    assert "please report it with the traceback above" in err[-1]


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    cases = {"global": (["--debug", "presets", "nosuch"], {}),
             "after the command": (["presets", "nosuch", "--debug"], {}),
             "environment": (["presets", "nosuch"], {"CO2S_DEBUG": "1"})}
    monkeypatch.delenv("CO2S_DEBUG", raising=False)
    for name, (argv, env) in cases.items():
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0] == "Traceback (most recent call last):", name
        assert any("co2s.errors.ConfigError" in line for line in err), name
        assert err[-1].startswith("error: unknown preset 'nosuch'"), name
    monkeypatch.setenv("CO2S_DEBUG", "0")
    error_line(capsys, ["presets", "nosuch"], 2, "unknown preset")


# -- /dev/full, a full tmpfs, a read-only mount -----------------------------------------------------


def test_output_to_dev_full(tmp_path):
    """Standard output on a full device: one line, exit 1, and no second failure at exit."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "co2s.cli.main", "presets", "demo"], stdout=full,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == ["error: no space left on device"]


def test_torch_save_onto_a_full_device_is_an_os_error():
    """torch.save reports a failed write as a RuntimeError ("unexpected pos"); the stream writer
    of every checkpoint keeps the OSError and its errno."""
    from co2s.atomic import write_stream

    with pytest.raises(OSError) as info:
        write_stream("/dev/full", lambda f: torch.save({"x": torch.zeros(1 << 20)}, f))
    assert info.value.errno == errno.ENOSPC and info.value.filename == "/dev/full"


def test_outputs_are_never_written_over_a_device_or_pipe(model, tmp_path, capsys):
    """The rename that completes an atomic write would replace the node itself (as root, a device)."""
    ckpt, _ = model
    fifo = tmp_path / "metrics.json"
    os.mkfifo(fifo)
    before = tree(tmp_path)
    error_line(capsys, ["evaluate", "--checkpoint", ckpt, "--out", fifo, "--overwrite", "--no-progress",
                        "--device", "cpu"], 2, f"error: {fifo} is a device, pipe or socket, not a file")
    assert fifo.is_fifo() and tree(tmp_path) == before and leftovers(tmp_path) == []


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (mount {' '.join(args)}: {done.stderr.strip() or done.returncode})")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path / "disk" (tests run as root; skipped where mounting is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk))
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` but ``leave`` bytes."""
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(0, st.f_bavail * st.f_frsize - leave)))


def test_a_really_full_disk(model, tiny_dataset, tmp_path, small_disk, monkeypatch, capsys):
    """Real writes onto a full tmpfs: a training checkpoint, a PNG, a model folder, a GeoTIFF.
    Each time one line naming the file, exit 1, and no partial file or temporary. A full temp
    folder ($TMPDIR) fails nothing: co2s stages no file there."""
    ckpt, _ = model
    fill(small_disk, 48 * 1024)  # room for a run folder's small files, not for a checkpoint
    run = small_disk / "run"
    cfg = tiny_config_dict(tiny_dataset, run, iters=2, ckpt_every=2, val_every=100)
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(cfg))
    error_line(capsys, ["train", tmp_path / "full.yaml", "--no-progress"], 1,
               f"error: cannot write {run / 'latest.ckpt'}: no space left on device")
    assert not list(run.glob("*.ckpt")) and leftovers(small_disk) == []

    (small_disk / "filler").unlink()
    fill(small_disk, 4 * 1024)
    tile = image(tmp_path / "tiles" / "a.png", (300, 300))  # a noisy PNG of about 270 kB
    before = tree(small_disk)
    error_line(capsys, predict(ckpt, tile, "--out", small_disk / "pred"), 1,
               f"error: cannot write {small_disk / 'pred' / 'a.png'}: no space left on device")
    error_line(capsys, ["export", "--checkpoint", ckpt, "--out", small_disk / "exported"], 1,
               f"error: cannot write {small_disk / 'exported' / 'model.safetensors'}: no space left on device")
    assert tree(small_disk) == before and leftovers(small_disk) == []

    # GeoTIFF: libtiff prints its own lines to the process's stderr (below Python, so not captured
    # here); co2s's is one line and the last
    raster = scene(tmp_path / "scenes" / "x.tif", (300, 300))
    capsys.readouterr()
    assert main(predict(ckpt, raster, "--out", small_disk / "pred", "--confidence")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"error: cannot write {small_disk / 'pred' / 'x_'}"), err
    assert tree(small_disk) == before and leftovers(small_disk) == []

    # the temp folder full: training elsewhere is not affected
    import tempfile

    monkeypatch.setenv("TMPDIR", str(small_disk))
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk))
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "elsewhere", iters=2, ckpt_every=2, val_every=100)
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "elsewhere.yaml"), "--no-progress"]) == 0


def test_a_read_only_mount(model, tmp_path, small_disk, capsys):
    ckpt, _ = model
    (small_disk / "pred").mkdir()
    _mount("-o", "remount,ro", str(small_disk))
    tile = image(tmp_path / "tiles" / "a.png")
    error_line(capsys, predict(ckpt, tile, "--out", small_disk / "pred"), 2,
               f"error: cannot write to output folder {small_disk / 'pred'}: read-only file system")
    error_line(capsys, ["evaluate", "--checkpoint", ckpt, "--out", small_disk / "pred", "--no-progress",
                        "--device", "cpu"], 1,
               f"error: cannot write {small_disk / 'pred' / 'metrics_test.json'}: read-only file system")
    error_line(capsys, ["export", "--checkpoint", ckpt, "--out", small_disk / "exported"], 1,
               f"error: cannot write {small_disk / 'exported'}: read-only file system")
    assert tree(small_disk) == {}


def test_an_output_name_that_is_a_folder(tiny_dataset, tmp_path, capsys):
    (tmp_path / "splits" / "labelled.txt").mkdir(parents=True)
    before = tree(tmp_path)
    error_line(capsys, ["splits", tiny_dataset / "train.txt", "--root", tiny_dataset, "--ratio", "0.5",
                        "--out", tmp_path / "splits"], 1,
               f"error: cannot use {tmp_path / 'splits' / 'labelled.txt'}: it is a folder, not a file")
    assert tree(tmp_path) == before and leftovers(tmp_path) == []
    assert (tmp_path / "splits" / "labelled.txt").is_dir()


# -- the user's files: refused in one line, before anything is written ----------------------------


def test_a_python_tag_in_a_run_folders_config(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: tiny\nevil: !!python/object/apply:os.system ['touch pwned']\n")
    cfg = tiny_config_dict(tiny_dataset, run, iters=2)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    before = tree(tmp_path)
    line = error_line(capsys, ["train", tmp_path / "run.yaml", "--no-progress"], 2,
                      f"error: {run / 'config.yaml'}: line 2, column 7: invalid YAML: a Python object tag")
    assert "python/object/apply:os.system" in line
    assert added(before, tree(tmp_path)) == ["run/.co2s.lock"]  # the run lock, taken first
    assert not (tmp_path / "pwned").exists()


def test_resume_from_weights_that_do_not_fit(tiny_dataset, tmp_path, capsys):
    """A latest.ckpt whose stored config is this run's but whose weights are of a wider model."""
    run = tmp_path / "run"
    cfg = tiny_config_dict(tiny_dataset, run, iters=4)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    config = validate(cfg)
    wider = validate({**cfg, "model": {**cfg["model"], "width": 16}})
    run.mkdir()
    write_model_checkpoint(run / "latest.ckpt", wider, build_models(wider))
    stored = torch.load(run / "latest.ckpt", weights_only=True)
    stored["config"] = validate(cfg).model_dump(mode="json")
    torch.save(stored, run / "latest.ckpt")
    before = tree(run)
    line = error_line(capsys, ["train", tmp_path / "run.yaml", "--no-progress"], 2,
                      f"error: cannot resume from {run / 'latest.ckpt'}: tensor 'model.")
    first = next(k for k, v in build_models(config)["model"].state_dict().items()
                 if v.shape != build_models(wider)["model"].state_dict()[k].shape)
    assert f"'model.{first}' has shape " in line and "the run's config describes needs" in line
    assert tree(run)["latest.ckpt"] == before["latest.ckpt"]


def test_config_values_no_run_could_use(tiny_dataset, tmp_path, capsys):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for value in ("0", ".nan", "-255", ".inf"):
        error_line(capsys, ["presets", path, "--set", f"data.scale={value}"], 2,
                   "data.scale", "must be a finite number above 0, or 'auto'")
    assert "scale: 255" in api.preset(str(path), ["data.scale=255"])
    error_line(capsys, ["presets", path, "--set", "data.palette=[[999, 0, 0], [0, 0, 0], [1, 1, 1]]"], 2,
               "data.palette: Value error, colour [999, 0, 0]: each channel must be from 0 to 255")


@pytest.mark.parametrize("change, words", [
    # the tester's case: a 2-block DINO student, whose default layers cannot feed the vlg head
    ("model.students.dino.backbone.arch={base: tiny, num_hidden_layers: 2}",
     "model.students.1: Value error, backbone.layers [1, 2] (the default for 2 blocks): the vlg head "
     "reads two skip maps and the last map, so give exactly 3 layers (2 blocks are too few"),
    ("model.students.clip.backbone.layers=[0, 4]",
     "backbone.layers [0, 4]: a clip backbone of 4 blocks takes hidden-state indices from 0 "
     "(the embeddings) to 3"),
    ("model.students.dino.backbone.layers=[1, 5, 9]", "a dinov3 backbone of 4 blocks takes increasing block "
     "numbers from 1 to 4"),
    ("model.students.dino.backbone.arch=vit-huge", "unknown dinov3 architecture 'vit-huge'"),
])
def test_students_that_cannot_be_built_are_refused_by_presets_and_train(tiny_dataset, tmp_path, capsys,
                                                                        change, words):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", method="co2s")
    cfg.pop("model")
    cfg["preset"] = "models/co2s-tiny"
    cfg["data"]["splits"]["unlabelled"] = "val.txt"
    path = tmp_path / "students.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["presets", str(path)]) == 0  # as it is, it is fine
    error_line(capsys, ["presets", path, "--set", change], 2, words)
    error_line(capsys, ["train", path, "--set", change, "--no-progress"], 2, words)
    assert not (tmp_path / "run").exists()


def test_an_empty_mask_file(tiny_dataset, tmp_path, capsys):
    (tiny_dataset / "masks" / "t1.png").write_bytes(b"")
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=2)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    line = error_line(capsys, ["train", tmp_path / "run.yaml", "--no-progress"], 2,
                      f"mask {tiny_dataset / 'masks' / 't1.png'} is an empty file (0 bytes")
    assert "cannot identify" not in line and not (tmp_path / "run" / "latest.ckpt").exists()


def test_pickled_weights_are_refused_without_torchs_advice(tiny_dataset, tmp_path, capsys):
    """A .pth that holds a pickled object: co2s says so and what it accepts, and never relays
    torch's advice to load it with weights_only=False (which would run the file's code)."""
    weights = tmp_path / "dino.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 64), "meta": _Foreign()}, weights)
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run")
    cfg["model"] = {"name": "students", "students": [
        {"name": "dino", "backbone": {"kind": "dinov3", "weights": str(weights)}, "guidance": "queries"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    line = error_line(capsys, ["model-summary", tmp_path / "run.yaml"], 2,
                      f"error: {weights}: holds pickled Python code or objects besides tensors",
                      "which co2s does not load", ".safetensors", "torch.save(model.state_dict())")
    assert "weights_only" not in line and "trust" not in line
