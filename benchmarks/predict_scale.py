"""Peak memory and speed of whole-scene prediction against scene size (a benchmark, not a test).

Writes synthetic three-band uint8 GeoTIFF scenes block row by block row (a full 20,000 x 20,000
array is never in memory), a random-weight checkpoint of the chosen model, and predicts each scene
in its own process, so that the peak resident memory (``ru_maxrss``) is that scene's alone. If
prediction streams, the peak is the same for every size.

    python benchmarks/predict_scale.py                            # 5000^2 and 20000^2, lite_unet, CPU
    python benchmarks/predict_scale.py --sizes 2000 --model co2s-tiny
    python benchmarks/predict_scale.py --device cuda --precision bf16 --out benchmarks/results/predict_scale_gpu.json
    python benchmarks/predict_scale.py --sizes 20000 --fit --polygons --out benchmarks/results/polygons_scale_cpu.json

Weights are random (speed does not depend on their values), unless ``--fit``: then the model is
first trained for a few hundred steps to read the scene's six field colours, so that its map has
the regions of a real one (random weights give a speckle of millions of one-pixel regions, which
says nothing about polygons). ``--polygons`` predicts every scene twice, the class raster alone
and with ``--polygons`` (GeoPackage), and reports features, vertices and the polygon file's size. ``lite_unet`` is the built-in CNN at
its test size (width 8, depth 3); ``co2s-tiny`` is the pair of tiny ViT students with confidence
fusion (both students run on every tile).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "lite_unet": ["model={name: lite_unet, width: 8, depth: 3}", "train.method=supervised"],
    "co2s-tiny": [],  # the demo preset's own students and fusion
}
BLOCK_ROWS = 512


def benchmark_config(model: str, tile: int, batch_size: int):
    from co2s.config.loader import load_config

    return load_config("demo", [*MODELS[model], f"train.crop_size={tile}", f"eval.batch_size={batch_size}"])


def write_checkpoint(path: Path, model: str, tile: int, batch_size: int, fit: bool = False,
                     field_scale: int = 1) -> None:
    import torch

    from co2s.engine.checkpoint import write_model_checkpoint
    from co2s.models.factory import build_models

    config = benchmark_config(model, tile, batch_size)
    torch.manual_seed(0)
    models = build_models(config)
    if fit:
        fit_fields(models, field_scale)
    write_model_checkpoint(path, config, models)


def scene_rows(y0: int, y1: int, size: int, field_scale: int = 1):
    """Rows ``[y0, y1)`` of the benchmark scene: the uint8 image [3, rows, size] and its fields
    (the class of each pixel, 0-5): blocky colour fields of 97 x 131 pixels times
    ``field_scale`` with a mild texture."""
    import numpy as np

    colours = np.random.default_rng(0).integers(0, 240, (6, 3), dtype=np.uint8)
    x = np.arange(size)
    y = np.arange(y0, y1)[:, None]
    field = ((y // (97 * field_scale)) * 7919 + (x // (131 * field_scale)) * 104729) % 6
    texture = ((x * 7 + y * 13) % 16).astype(np.uint8)
    return colours[field].transpose(2, 0, 1) + texture, field


def fit_fields(models: dict, field_scale: int = 1, steps: int = 300) -> None:
    """Train the model(s) briefly to read the field colours (cross-entropy on random crops of a
    scene with the same field size)."""
    import torch

    from co2s.data.raster import scale_image

    image, field = scene_rows(0, 1024, 1024, field_scale)
    x, y = torch.from_numpy(scale_image(image)), torch.from_numpy(field)
    gen = torch.Generator().manual_seed(0)
    for model in models.values():
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(steps):
            ys, xs = torch.randint(0, 1024 - 96, (2, 8), generator=gen)
            batch = torch.stack([x[:, a : a + 96, b : b + 96] for a, b in zip(ys, xs)])
            target = torch.stack([y[a : a + 96, b : b + 96] for a, b in zip(ys, xs)])
            loss = torch.nn.functional.cross_entropy(model(batch), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()


def write_scene(path: Path, size: int, field_scale: int = 1) -> None:
    """A square uint8 scene of :func:`scene_rows`, written in block rows."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, BLOCK_ROWS):
            rows, _ = scene_rows(y0, min(y0 + BLOCK_ROWS, size), size, field_scale)
            dst.write(rows, window=Window(0, y0, size, rows.shape[1]))


def run_cell(args) -> dict:
    """Predict one scene in this process; report time, throughput and peak resident memory."""
    import torch

    from co2s.inference.predict import predict_files
    from co2s.inference.scene import PredictOptions

    torch.set_num_threads(args.threads)
    options = PredictOptions(tile=args.tile, batch_size=args.batch_size, precision=args.precision,
                             confidence=args.extras, preview=args.extras, polygons="gpkg" if args.with_polygons else None)
    start = time.perf_counter()
    [result] = predict_files(args.checkpoint, [args.scene], args.out_dir, args.device, progress=False,
                             options=options, overwrite=True)  # a reused --workdir: this benchmark's own outputs
    seconds = time.perf_counter() - start
    if result.error:
        raise SystemExit(result.error)
    size = int(args.cell)
    polygons = {}
    if args.with_polygons:
        import pyogrio
        import shapely

        path = next(p for p in result.outputs if p.name.endswith("_polygons.gpkg"))
        _, _, wkb, _ = pyogrio.raw.read(path, columns=[])
        polygons = {"features": len(wkb), "vertices": int(shapely.get_num_coordinates(shapely.from_wkb(wkb)).sum()),
                    "polygons_mib": round(path.stat().st_size / 2**20, 1)}
    return {"size": size, "polygons": bool(args.with_polygons), **polygons, "megapixels": size * size / 1e6,
            "seconds": round(seconds, 1),
            "megapixels_per_second": round(size * size / 1e6 / seconds, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "outputs_mib": round(sum(p.stat().st_size for p in result.outputs) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="square scene sides")
    parser.add_argument("--model", choices=sorted(MODELS), default="lite_unet")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine more threads stall)")
    parser.add_argument("--no-extras", dest="extras", action="store_false",
                        help="class raster only (default: also the confidence raster and the preview)")
    parser.add_argument("--fit", action="store_true", help="train the model to read the fields first "
                        "(a map with real regions; needed for --polygons)")
    parser.add_argument("--polygons", action="store_true", help="predict each scene twice: the class "
                        "raster alone, and with --polygons")
    parser.add_argument("--field-scale", type=int, default=1, help="fields this many times larger (fewer "
                        "regions: polygon memory follows the regions, not the pixels)")
    parser.add_argument("--workdir", help="where scenes and outputs go (default: a temporary folder)")
    parser.add_argument("--out", default="benchmarks/results/predict_scale_cpu.json")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--scene", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--with-polygons", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(args)))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="predict_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / f"{args.model}{f'_fit{args.field_scale}' if args.fit else ''}.ckpt"
    write_checkpoint(checkpoint, args.model, args.tile, args.batch_size, args.fit, args.field_scale)
    rows = []
    for size in args.sizes:
        scene = work / (f"scene_{size}.tif" if args.field_scale == 1 else f"scene_{size}_fields{args.field_scale}.tif")
        if not scene.is_file():
            print(f"writing {scene} ...", file=sys.stderr, flush=True)
            write_scene(scene, size, args.field_scale)
        for polygons in ([False, True] if args.polygons else [False]):
            cmd = [sys.executable, __file__, "--cell", str(size), "--scene", str(scene), "--checkpoint",
                   str(checkpoint), "--out-dir", str(work / f"out_{size}"), "--tile", str(args.tile),
                   "--batch-size", str(args.batch_size), "--device", args.device, "--precision", args.precision,
                   "--threads", str(args.threads), *([] if args.extras else ["--no-extras"]),
                   *(["--with-polygons"] if polygons else [])]
            print(f"predicting {size} x {size}{' with polygons' if polygons else ''} ...", file=sys.stderr,
                  flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"scene {size} failed:\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    import torch

    from co2s import __version__

    result = {
        "benchmark": "predict_scale", "model": args.model, "tile": args.tile, "batch_size": args.batch_size,
        "device": args.device, "precision": args.precision, "threads": args.threads, "fit": args.fit,
        "field_scale": args.field_scale,
        "outputs": "classes + confidence + preview" if args.extras else "classes",
        "rows": rows, "co2s": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'scene':>13} {'polygons':>9} {'MP':>7} {'seconds':>8} {'MP/s':>7} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['size']:>6} x {r['size']:<6}{str(r['polygons']):>9} {r['megapixels']:>6.0f} {r['seconds']:>8.1f} "
              f"{r['megapixels_per_second']:>7.3f} {r['peak_rss_mib']:>13.1f}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
