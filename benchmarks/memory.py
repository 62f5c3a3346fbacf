"""What fits a GPU: peak memory of a Co2S training step and of a prediction tile, per student pair,
batch, precision and activation checkpointing (a benchmark, not a test).

    python benchmarks/memory.py                                    # paper + SAT pairs, batches 1 2 4
    python benchmarks/memory.py --configs sat --measure 1          # measure only batch 1 of the SAT pair
    python benchmarks/memory.py --device cuda --no-estimate        # on a GPU: max_memory_allocated

A training cell is the real step of ``benchmarks/throughput.py`` (``train_step``: Co2S's
``training_loss``, backward, AdamW step; full steps, no burn-in), run twice in its own process so
that the second step holds the optimiser states; batch b means b labelled and b unlabelled images
(each unlabelled image also brings a CutMix-source image). Every cell is estimated by running that
step on fake tensors (:func:`co2s.engine.memory.fake_tensors`: seconds, no memory), and the
batches in ``--measure`` are also measured: on CPU the peak bytes of live tensors
(:class:`co2s.engine.memory.LiveTensorBytes`, what ``torch.cuda.max_memory_allocated`` counts on a
GPU), on CUDA that counter itself. The report gives the largest difference between the two. A
prediction cell is one forward of the fused pair on ``--tile``-pixel tiles without gradients.
Results: ``benchmarks/results/memory_<device>.json`` (resumable: cells already there are kept) and a markdown table (docs/memory.md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from co2s.engine.memory import LiveTensorBytes  # noqa: E402

CARDS_GIB = (16, 24, 40, 80)
MEASURED, ESTIMATED = "measured", "estimated"


def training_cell(args, config: str, precision: str, batch: int, checkpointing: bool, data_root: str,
                  estimate: bool) -> dict:
    """One training cell in its own process (throughput.py's cell, two full steps): measured, or
    estimated on fake tensors."""
    memory = ["--estimate-memory"] if estimate else ["--track-memory"] if args.device == "cpu" else []
    cmd = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--cell", f"co2s,{precision}",
           "--data-root", data_root, "--config", config, "--device", "cpu" if estimate else args.device,
           "--crop", str(args.crop), "--batch", str(batch), "--steps", "1", "--warmup", "1", "--no-flops",
           *memory, *(["--checkpointing"] if checkpointing else [])]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{config} {precision} batch {batch}: failed\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    peak_mib = result["peak_gpu_mib"] if args.device == "cuda" and not estimate else result["peak_tensor_mib"]["cpu"]
    cell = {"peak_mib": peak_mib, "cell_s": time.perf_counter() - start}
    if not estimate:
        cell.update(step_s=result["step_s"], peak_rss_mib=result["peak_rss_mib"])
    return cell


def inference_cell(args, config_name: str, precision: str, tiles: int) -> dict:
    """Peak memory of one no-grad forward of the fused pair over ``tiles`` tiles (weights included)."""
    from co2s.inference.segmenter import Segmenter
    from co2s.models.factory import build_models
    from co2s.models.summary import without_weights

    config = _pair_config(config_name)
    students = [without_weights(s).model_dump(mode="json") for s in config.model.students]
    config = config.override({"model.students": students})
    device = torch.device(args.device)
    tensors = LiveTensorBytes() if args.device == "cpu" else None
    if tensors:
        tensors.__enter__()
    try:
        segmenter = Segmenter.from_config(build_models(config), config).to(device).eval()
        x = torch.rand(tiles, 3, args.tile, args.tile, device=device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed"):
            segmenter(x)
        peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else tensors.peak["cpu"]
    finally:
        if tensors:
            tensors.__exit__(None, None, None)
    return {"peak_mib": peak / 2**20}


def _pair_config(name: str):
    """The demo preset with the pair of throughput.py's ``name`` (classes and bands of the demo)."""
    import throughput

    from co2s.config.loader import load_config

    path = Path(tempfile.mkdtemp(prefix="co2s-memory-")) / f"{name}.yaml"
    path.write_text(json.dumps({"preset": ["demo", throughput.CONFIGS[name]["models"]]}))
    return load_config(str(path), ["train.method=co2s"])


def fits(mib: float) -> str:
    """The smallest card of CARDS_GIB the peak fits on, keeping 10 % for the CUDA context and the
    allocator's fragmentation (docs/memory.md)."""
    for gib in CARDS_GIB:
        if mib * 1.1 <= gib * 1024:
            return f"{gib} GB"
    return f"> {CARDS_GIB[-1]} GB"


def markdown(rows: list[dict]) -> str:
    """One line per cell: the measured peak where there is one, the fake-tensor estimate, and the
    smallest card the peak (measured, else estimated) fits on."""
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["config"], r["precision"], r["checkpointing"], r["batch"]), {})[r["how"]] = r["peak_mib"]
    lines = ["| pair | precision | checkpointing | batch | measured | estimated | fits |",
             "|---|---|---|---:|---:|---:|---|"]
    for (config, precision, ckpt, batch), peaks in sorted(cells.items()):
        shown = {how: f"{peaks[how] / 1024:.1f} GiB" if how in peaks else "-" for how in (MEASURED, ESTIMATED)}
        lines.append(f"| {config} | {precision} | {'on' if ckpt else 'off'} | {batch} | {shown[MEASURED]} "
                     f"| {shown[ESTIMATED]} | {fits(peaks.get(MEASURED, peaks.get(ESTIMATED)))} |")
    return "\n".join(lines)


def estimate_error(rows: list[dict]) -> float | None:
    """The largest relative difference between estimate and measurement over the cells with both."""
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["config"], r["precision"], r["checkpointing"], r["batch"]), {})[r["how"]] = r["peak_mib"]
    errors = [abs(c[ESTIMATED] - c[MEASURED]) / c[MEASURED] for c in cells.values() if len(c) == 2]
    return max(errors) if errors else None


def prediction_table(rows: list[dict]) -> str:
    lines = ["| pair | precision | tiles | peak |", "|---|---|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["config"], r["precision"], r["tiles"])):
        lines.append(f"| {r['config']} | {r['precision']} | {r['tiles']} x {r['tile']} px | {r['peak_mib'] / 1024:.2f} GiB |")
    return "\n".join(lines)


def write_doc(path: Path, report: dict) -> None:
    """Refresh the generated tables of docs/memory.md from the results."""
    text = path.read_text()
    for name, table in (("TABLE", markdown(report["training"])), ("PREDICTION", prediction_table(report["inference"]))):
        begin, end = f"<!-- BEGIN GENERATED {name} (python benchmarks/memory.py) -->", f"<!-- END GENERATED {name} -->"
        head, rest = text.split(begin)
        text = f"{head}{begin}\n{table}\n{end}{rest.split(end)[1]}"
    error = estimate_error(report["training"])
    text = re.sub(r"agree within [^;]*;", f"agree within {100 * error:.2f} %;" if error is not None else
                  "agree within (not measured yet);", text)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["paper", "sat"], choices=["tiny", "paper", "sat"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--measure", nargs="*", type=int, default=[1, 2], help="batches also measured (real tensors)")
    parser.add_argument("--no-estimate", action="store_true", help="measured cells only (no fake-tensor estimates)")
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--tile", type=int, default=512, help="prediction tile size")
    parser.add_argument("--tiles", nargs="+", type=int, default=[1, 4], help="tiles per prediction batch")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/memory_<device>.json)")
    parser.add_argument("--doc", type=Path, help="only refresh this doc's tables (docs/memory.md) from --out")
    parser.add_argument("--infer-cell", help=argparse.SUPPRESS)  # internal: config,precision,tiles
    args = parser.parse_args()
    if args.doc:
        write_doc(args.doc, json.loads((args.out or REPO / "benchmarks" / "results" / "memory_cpu.json").read_text()))
        return
    if args.infer_cell:
        name, precision, tiles = args.infer_cell.split(",")
        print(json.dumps(inference_cell(args, name, precision, int(tiles))))
        return

    import throughput

    out_path = args.out or REPO / "benchmarks" / "results" / f"memory_{args.device}.json"
    report = json.loads(out_path.read_text()) if out_path.exists() else {"training": [], "inference": []}
    report["training"] = [r for r in report["training"] if r["how"] in (MEASURED, ESTIMATED)]
    done = {(r["config"], r["precision"], r["checkpointing"], r["batch"], r["how"]) for r in report["training"]}

    def save() -> None:  # after every cell: a long run resumes from what it has
        report.update(benchmark="memory", device=args.device, crop=args.crop, tile=args.tile,
                      hardware=throughput.hardware(args.device),
                      note="peak = live tensor bytes (CPU; what torch.cuda.max_memory_allocated counts) or "
                           "torch.cuda.max_memory_allocated (CUDA) over two full Co2S steps; 'estimated' "
                           "rows are linear in the batch from the measured batches 1 and 2.")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2) + "\n")

    for name in args.configs:
        data_root = tempfile.mkdtemp(prefix="co2s-memory-")
        throughput.write_benchmark_data(Path(data_root), name, args.crop, max(args.batches))
        for precision in args.precision:
            for ckpt in (c == "on" for c in args.checkpointing):
                for batch in args.batches:
                    for how, estimate in ((MEASURED, False), (ESTIMATED, True)):
                        if (estimate and args.no_estimate) or (not estimate and batch not in args.measure):
                            continue
                        if (name, precision, ckpt, batch, how) in done:
                            continue
                        cell = training_cell(args, name, precision, batch, ckpt, data_root, estimate)
                        report["training"].append({"config": name, "precision": precision, "checkpointing": ckpt,
                                                   "batch": batch, "how": how, **cell})
                        done.add((name, precision, ckpt, batch, how))
                        print(f"{name} {precision} ckpt={ckpt} batch {batch} {how}: {cell['peak_mib']:.0f} MiB "
                              f"({cell['cell_s']:.0f} s)", file=sys.stderr)
                        save()
        for precision in args.precision:
            for tiles in args.tiles:
                if any((r["config"], r["precision"], r["tiles"]) == (name, precision, tiles)
                       for r in report["inference"]):
                    continue
                cmd = [sys.executable, __file__, "--infer-cell", f"{name},{precision},{tiles}", "--device",
                       args.device, "--tile", str(args.tile)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                if out.returncode != 0:
                    raise SystemExit(f"{name} {precision} prediction: failed\n{out.stderr[-3000:]}")
                cell = json.loads(out.stdout.strip().splitlines()[-1])
                report["inference"].append({"config": name, "precision": precision, "tiles": tiles,
                                            "tile": args.tile, **cell})
                save()

    print(markdown(report["training"]))
    error = estimate_error(report["training"])
    if error is not None:
        print(f"largest difference between estimate and measurement: {100 * error:.2f} %")
    for r in report["inference"]:
        print(f"prediction {r['config']} {r['precision']}: {r['peak_mib']:.0f} MiB for {r['tiles']} tile(s) of "
              f"{r['tile']} px")
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
