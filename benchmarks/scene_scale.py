"""Scene training at scale: peak RSS against a small scene, samples/s against pre-cut tiles.

The measured acceptance of scene training: "a 20,000 x 20,000 3-band GeoTIFF with ~30 labelled
polygons in a GeoPackage (another CRS than the raster) trains with every method; peak RSS within
10 % of the same run on a 2,000 x 2,000 scene; samples per second within 20 % of pre-cut tiles of
the same crop size". Run it on an otherwise idle machine (every number is a wall-clock one):

    python benchmarks/scene_scale.py                      # 20000 vs 2000, all methods, 60 iters
    python benchmarks/scene_scale.py --sizes 3000 1000 --iters 12 --warmup 4 \
        --work /tmp/scene_scale_check --out /tmp/scene_scale_check/out.json   # a quick check

Data (cached in ``--work``): per size a 3-band uint8 GeoTIFF, EPSG:32633 at 0.5 m, tiled 256 x 256,
DEFLATE (as orthophotos and COGs are stored, so every window read pays the block decoding a user
pays; the tiles are PNG, DEFLATE too), painted with pieces of ``generate_scene``; ``--polygons``
star-shaped polygons (at most 250 px across, one per grid cell, the demo classes in turn) in
EPSG:4326 in a GeoPackage; from the small scene, tiles of the crop size on a grid: those a polygon
touches are labelled (the polygons rasterised, 255 elsewhere), the others unlabelled.

Runs: per source (big scene, small scene, tiles) and method one ``co2s train`` process: the demo
preset, crop ``--crop``, batch 2 (+2 unlabelled), 0 workers (loading is inside the step), no
validation, seed 0, ``semi.burn_in`` 0 (every step does the method's full work). co2s trains the
demo's two students; the one-model methods ``lite_unet`` width 16 at lr 0.003 (the demo's own CNN:
a light model makes loading a larger share of a step, the strict case for throughput).

Numbers: ``peak_rss_mib`` the child's own peak RSS (``os.wait4`` of that pid); ``samples_per_s``
labelled + unlabelled crops per second (2 + 2 per step, the CutMix source crop an unlabelled item
also reads not counted) over the steps after ``--warmup``, from per-step times in metrics.jsonl
(``log_every`` 1: startup, index and model build excluded); ``index_s`` spawn to the class table
(imports, file checks, label index); ``startup_s`` spawn to the first step; ``seconds`` the process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's code, as the child processes get it

METHODS = ["supervised", "fixmatch", "unimatch", "co2s"]
CRS, PIXEL, ORIGIN = "EPSG:32633", 0.5, (500_000.0, 5_000_000.0)  # UTM 33N, 0.5 m, west/north
PIECE, POOL = 1024, 16  # generated pieces (reused with rot90/flips: 20000^2 fresh would take minutes)
BATCH = 2


def transform_of():
    from rasterio.transform import from_origin

    return from_origin(*ORIGIN, PIXEL, PIXEL)  # north-up, 0.5 m pixels


def write_scene(path: Path, size: int, seed: int) -> None:
    """A tiled DEFLATE GeoTIFF written strip by strip of ``PIECE`` rows: memory ~ one strip."""
    import rasterio
    from rasterio.windows import Window

    from co2s.demo.synthetic import generate_scene

    rng = np.random.default_rng(seed)
    pool = [generate_scene(PIECE, PIECE, rng)[0] for _ in range(min(POOL, math.ceil(size / PIECE) ** 2))]
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=CRS,
                   transform=transform_of(), tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", predictor=2, interleave="pixel", BIGTIFF="IF_SAFER")
    part = path.with_suffix(".part.tif")
    with rasterio.open(part, "w", **profile) as dst:
        for y in range(0, size, PIECE):
            h = min(PIECE, size - y)
            strip = np.empty((h, size, 3), np.uint8)
            for x in range(0, size, PIECE):
                piece = np.rot90(pool[rng.integers(len(pool))], int(rng.integers(4)))
                piece = piece[:, ::-1] if rng.integers(2) else piece
                strip[:, x:x + PIECE] = piece[:h, : size - x]
            dst.write(strip.transpose(2, 0, 1), window=Window(0, y, size, h))
    os.replace(part, path)


def make_polygons(size: int, count: int, reference: int) -> list[tuple[np.ndarray, str]]:
    """``count`` irregular star-shaped polygons (pixel coordinates), one per cell of a grid over the
    scene; the same shapes on every scene, sized to fit the cells of the ``reference`` scene."""
    from co2s.demo.synthetic import DEMO_CLASSES

    rng = np.random.default_rng(1)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cell_w, cell_h = size / cols, size / rows
    largest = min(125.0, 0.3 * reference / max(cols, rows))  # 250 px across at most, room for unlabelled tiles
    polygons = []
    for i in range(count):
        radius = largest * rng.uniform(0.4, 1.0)
        cx = (i % cols) * cell_w + rng.uniform(radius, cell_w - radius)
        cy = (i // cols) * cell_h + rng.uniform(radius, cell_h - radius)
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(7, 13))))
        r = radius * rng.uniform(0.6, 1.0, angles.size)
        xy = np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)])
        polygons.append((xy.clip(0, size), DEMO_CLASSES[i % len(DEMO_CLASSES)]))
    return polygons


def write_polygons(path: Path, polygons: list) -> None:
    """The polygons in EPSG:4326 (not the raster's CRS: the package must reproject) as a GeoPackage."""
    import pyogrio.raw
    import shapely
    from rasterio.warp import transform

    t, geoms = transform_of(), []
    for xy, _ in polygons:
        lon, lat = transform(CRS, "EPSG:4326", *(t * (xy[:, 0], xy[:, 1])))
        geoms.append(shapely.to_wkb(shapely.Polygon(np.column_stack([lon, lat]))))
    classes = np.array([c for _, c in polygons], dtype=object)
    part = path.with_suffix(".part.gpkg")
    part.unlink(missing_ok=True)
    pyogrio.raw.write(part, np.array(geoms, dtype=object), [classes], ["class"], layer="polygons",
                      driver="GPKG", geometry_type="Polygon", crs="EPSG:4326")
    os.replace(part, path)


def write_tiles(folder: Path, scene: Path, polygons: list, crop: int) -> None:
    """Tiles of ``crop`` px on a grid over the scene: labelled where a polygon touches, else unlabelled."""
    import rasterio
    from PIL import Image
    from rasterio.features import rasterize
    from shapely import Polygon

    from co2s.demo.synthetic import DEMO_CLASSES

    with rasterio.open(scene) as src:
        image = src.read().transpose(1, 2, 0)
    size = image.shape[0]
    labels = rasterize([(Polygon(xy), DEMO_CLASSES.index(c)) for xy, c in polygons], out_shape=(size, size),
                       fill=255, dtype="uint8")  # pixel centres (all_touched off), as scene labels
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"labelled": [], "unlabelled": []}
    for y in range(0, size - crop + 1, crop):
        for x in range(0, size - crop + 1, crop):
            name = f"r{y}_c{x}.png"
            Image.fromarray(image[y:y + crop, x:x + crop]).save(folder / "images" / name)
            mask = labels[y:y + crop, x:x + crop]
            if (mask != 255).any():
                Image.fromarray(mask, "L").save(folder / "masks" / name)
                lines["labelled"].append(f"{folder.name}/images/{name} {folder.name}/masks/{name}")
            else:  # list entries are relative to data.root, the tiles folder's parent
                lines["unlabelled"].append(f"{folder.name}/images/{name}")
    for split, entries in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(entries) + "\n")
    (folder / "done.json").write_text(json.dumps({k: len(v) for k, v in lines.items()}))


def tiles_name(args) -> str:
    return f"tiles_{args.sizes[1]}_c{args.crop}_n{args.polygons}"


def prepare_data(args) -> None:
    """Scenes (cached: minutes at 20000), polygons (rewritten: milliseconds) and tiles (cached)."""
    data = args.work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        if not (data / f"scene_{size}.tif").is_file():
            print(f"writing scene_{size}.tif ...", file=sys.stderr, flush=True)
            write_scene(data / f"scene_{size}.tif", size, seed=size)
        write_polygons(data / f"polygons_{size}.gpkg", make_polygons(size, args.polygons, args.sizes[1]))
    small = args.sizes[1]
    if not (data / tiles_name(args) / "done.json").is_file():
        write_tiles(data / tiles_name(args), data / f"scene_{small}.tif",
                    make_polygons(small, args.polygons, small), args.crop)


def run_config(args, source: str, method: str) -> dict:
    """The demo preset with this run's data, method, model and the benchmark's train settings."""
    from co2s.config.loader import config_to_dict, load_config

    cfg = config_to_dict(load_config("demo"))
    data = args.work / "data"
    cfg["data"]["root"] = str(data)
    cfg["data"]["splits"] = {"train": None, "labelled": None, "unlabelled": None, "val": None, "test": None}
    kind, size = source.split("-")
    if kind == "scene":
        cfg["data"]["scenes"] = {"rasters": [f"scene_{size}.tif"],
                                 "labels": {"vector": f"polygons_{size}.gpkg", "attribute": "class"}}
    else:
        tiles = tiles_name(args)
        cfg["data"]["splits"].update(labelled=f"{tiles}/labelled.txt", unlabelled=f"{tiles}/unlabelled.txt")
    if method != "co2s":
        cfg["model"] = {"name": "lite_unet", "width": 16}
        cfg["train"]["lr"] = 0.003
    cfg["train"].update(method=method, crop_size=args.crop, batch_size=BATCH, iters=args.iters,
                        num_workers=0, seed=0, log_every=1, val_every=args.iters + 1,
                        ckpt_every=args.iters + 1)  # no checkpoint but the final one, after the timing
    cfg["train"]["semi"]["burn_in"] = 0.0
    cfg["name"] = f"{source}-{method}"
    return cfg


def measure(args, source: str, method: str) -> dict:
    """One ``co2s train`` child: its own peak RSS (wait4), step times, time to index and first step."""
    run_dir = args.work / "runs" / f"{source}-{method}-i{args.iters}-c{args.crop}"
    shutil.rmtree(run_dir, ignore_errors=True)  # never resume: a resumed run would time nothing
    run_dir.mkdir(parents=True)
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config.write_text(json.dumps(run_config(args, source, method)))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "co2s.cli.main", "train", str(config), "--out", str(run_dir), "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    stamps: dict[str, float] = {}
    output: list[str] = []

    def read_output() -> None:
        for line in proc.stdout:
            output.append(line)
            if "pixels per class" in line and "index" not in stamps:
                stamps["index"] = time.perf_counter() - start

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    metrics = run_dir / "metrics.jsonl"
    while True:  # wait4 on this pid alone: ru_maxrss is this child's peak, not the max of all children
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if "log" not in stamps and metrics.is_file() and metrics.stat().st_size:
            stamps["log"] = time.perf_counter() - start
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    (run_dir / "output.log").write_text("".join(output))
    result = {"source": source, "kind": source.split("-")[0], "size": int(source.split("-")[1]),
              "method": method, "iters": args.iters, "crop": args.crop, "seconds": round(seconds, 2),
              "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # Linux: KiB
    if proc.returncode != 0:
        return {**result, "error": "".join(output)[-3000:]}
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("kind") == "train"]
    step_s = [BATCH / r["images_per_sec"] for r in steps]  # log_every 1: one step per record
    timed = step_s[args.warmup:]
    crops = BATCH + (BATCH if method != "supervised" else 0)  # labelled + unlabelled per step
    return {**result, "steps": len(steps), "timed_steps": len(timed), "crops_per_step": crops,
            "samples_per_s": round(crops * len(timed) / sum(timed), 3) if timed else None,
            "median_step_s": round(float(np.median(timed)), 4) if timed else None,
            "index_s": round(stamps["index"], 2) if "index" in stamps else None,
            "startup_s": round(stamps["log"] - step_s[0], 2) if "log" in stamps and step_s else None}


def ratio_table(results: list[dict], big: int, small: int) -> tuple[str, list[dict]]:
    """RSS(big)/RSS(small) (pass <= 1.10) and samples/s(big scene)/samples/s(tiles) (pass >= 0.80)."""
    by = {(r["source"], r["method"]): r for r in results if "error" not in r}
    verdicts = []
    lines = ["| method | RSS big MiB | RSS small MiB | RSS ratio | RSS | scene samples/s | tiles samples/s "
             "| speed ratio | speed | index s (big/small/tiles) |", "|---|" + "---:|" * 9]
    for method in sorted({r["method"] for r in results}, key=METHODS.index):
        b, s, t = (by.get((f"{k}-{n}", method)) for k, n in
                   (("scene", big), ("scene", small), ("tiles", small)))
        if not (b and s and t):
            lines.append(f"| {method} | failed or missing | | | | | | | | |")
            verdicts.append({"method": method, "error": "a run failed or is missing"})
            continue
        rss = b["peak_rss_mib"] / s["peak_rss_mib"]
        speed = b["samples_per_s"] / t["samples_per_s"]
        v = {"method": method, "rss_ratio": round(rss, 3), "rss_pass": rss <= 1.10,
             "speed_ratio": round(speed, 3), "speed_pass": speed >= 0.80,
             "small_scene_speed_ratio": round(s["samples_per_s"] / t["samples_per_s"], 3)}
        verdicts.append(v)
        lines.append(f"| {method} | {b['peak_rss_mib']:.0f} | {s['peak_rss_mib']:.0f} | {rss:.3f} | "
                     f"{'pass' if v['rss_pass'] else 'FAIL'} | {b['samples_per_s']:.2f} | "
                     f"{t['samples_per_s']:.2f} | {speed:.3f} | {'pass' if v['speed_pass'] else 'FAIL'} | "
                     f"{b['index_s']}/{s['index_s']}/{t['index_s']} |")
    return "\n".join(lines), verdicts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs=2, default=[20000, 2000], metavar=("BIG", "SMALL"),
                   help="scene sides in px: the scene under test, then the reference (tiles are cut from it)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="first steps left out of samples/s")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--polygons", type=int, default=30)
    p.add_argument("--work", type=Path, default=Path("/tmp/co2s_scene_scale"), help="data and runs (cached)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scene_scale_cpu.json")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    args = p.parse_args()
    if args.iters <= args.warmup or args.sizes[0] <= args.sizes[1]:
        p.error("need --iters > --warmup and the big size first: --sizes BIG SMALL")
    big, small = args.sizes
    prepare_data(args)
    results = []
    for source in (f"scene-{big}", f"scene-{small}", f"tiles-{small}"):
        for method in args.methods:
            done = args.work / "results" / f"{source}-{method}-i{args.iters}-c{args.crop}-w{args.warmup}.json"
            if done.is_file() and not args.force:
                results.append(json.loads(done.read_text()))
                continue
            print(f"{source} {method} ...", file=sys.stderr, flush=True)
            result = measure(args, source, method)
            print(f"  {result.get('samples_per_s')} samples/s, {result['peak_rss_mib']} MiB, "
                  f"{result['seconds']} s" + (" FAILED" if "error" in result else ""), file=sys.stderr)
            if "error" in result:
                print(result["error"], file=sys.stderr)
            else:  # failures are not cached: the next invocation retries them
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(result, indent=2))
            results.append(result)
    table, verdicts = ratio_table(results, big, small)
    print(table)
    report = {
        "benchmark": "scene_scale", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": version("torch"), "rasterio": version("rasterio")},
        "settings": {"sizes": args.sizes, "iters": args.iters, "warmup": args.warmup, "crop": args.crop,
                     "batch": BATCH, "polygons": args.polygons, "work": args.work.name,  # scratch: its name only
                     "tiles": json.loads((args.work / "data" / tiles_name(args) / "done.json").read_text()),
                     "GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX")},  # GDAL's block cache: part of the RSS
        "acceptance": "rss_ratio = peak RSS big scene / small scene <= 1.10; speed_ratio = samples/s big "
                      "scene / tiles >= 0.80 (per method)",
        "verdicts": verdicts, "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
