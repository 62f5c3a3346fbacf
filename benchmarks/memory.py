"""What fits a GPU: peak memory of a Co2S training step and of a prediction tile, per student pair,
batch, precision and activation checkpointing (a benchmark, not a test).

    python benchmarks/memory.py                                    # paper + SAT pairs, batches 1 2 4
    python benchmarks/memory.py --configs paper --measure 1 2 4    # measure batch 4 too
    python benchmarks/memory.py --device cuda                      # on a GPU: max_memory_allocated

A training cell is the real step of ``benchmarks/throughput.py`` (``train_step``: Co2S's
``training_loss``, backward, AdamW step; full steps, no burn-in), run twice in its own process so
that the second step holds the optimiser states; batch b means b labelled and b unlabelled images
(each unlabelled image also brings a CutMix-source image). On CPU the peak is the bytes of live
tensors (:class:`co2s.engine.memory.LiveTensorBytes`), which is what
``torch.cuda.max_memory_allocated`` counts on a GPU; on CUDA it is that counter itself. Batches not
in ``--measure`` are estimated linearly in the batch from batches 1 and 2
(:func:`co2s.engine.memory.linear_in_batch`). A prediction cell is one forward of the fused pair
on ``--tile``-pixel tiles without gradients. Results: ``benchmarks/results/memory_<device>.json``
and a markdown table (docs/memory.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from co2s.engine.memory import LiveTensorBytes, linear_in_batch  # noqa: E402

CARDS_GIB = (16, 24, 40, 80)


def training_cell(args, config: str, precision: str, batch: int, checkpointing: bool, data_root: str) -> dict:
    """One measured training cell, in its own process (throughput.py's cell, two full steps)."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--cell", f"co2s,{precision}",
           "--data-root", data_root, "--config", config, "--device", args.device, "--crop", str(args.crop),
           "--batch", str(batch), "--steps", "1", "--warmup", "1", "--no-flops",
           *(["--track-memory"] if args.device == "cpu" else []), *(["--checkpointing"] if checkpointing else [])]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{config} {precision} batch {batch}: failed\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    peak_mib = (result["peak_gpu_mib"] if args.device == "cuda" else result["peak_tensor_mib"]["cpu"])
    return {"peak_mib": peak_mib, "step_s": result["step_s"], "cell_s": time.perf_counter() - start,
            "peak_rss_mib": result["peak_rss_mib"]}


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
    lines = ["| pair | precision | checkpointing | batch | training step peak | how | fits |",
             "|---|---|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['precision']} | {'on' if r['checkpointing'] else 'off'} | {r['batch']} "
                     f"| {r['peak_mib'] / 1024:.1f} GiB | {r['how']} | {fits(r['peak_mib'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["paper", "sat"], choices=["tiny", "paper", "sat"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--measure", nargs="+", type=int, default=[1, 2], help="batches measured; others estimated")
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--tile", type=int, default=512, help="prediction tile size")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/memory_<device>.json)")
    parser.add_argument("--infer-cell", help=argparse.SUPPRESS)  # internal: config,precision,tiles
    args = parser.parse_args()
    if args.infer_cell:
        name, precision, tiles = args.infer_cell.split(",")
        print(json.dumps(inference_cell(args, name, precision, int(tiles))))
        return
    if not {1, 2} <= set(args.measure):
        parser.error("--measure needs batches 1 and 2 (the estimate is linear in the batch from them)")

    import throughput

    out_path = args.out or REPO / "benchmarks" / "results" / f"memory_{args.device}.json"
    report = json.loads(out_path.read_text()) if out_path.exists() else {"training": [], "inference": []}
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
        throughput.write_benchmark_data(Path(data_root), name, args.crop, max(args.measure))
        for precision in args.precision:
            for ckpt in (c == "on" for c in args.checkpointing):
                measured = {}
                for row in report["training"]:
                    if (row["config"], row["precision"], row["checkpointing"], row["how"]) == \
                            (name, precision, ckpt, f"measured ({args.device})"):
                        measured[row["batch"]] = row["peak_mib"]
                for batch in sorted(set(args.measure)):
                    if batch in measured:
                        continue
                    cell = training_cell(args, name, precision, batch, ckpt, data_root)
                    measured[batch] = cell["peak_mib"]
                    report["training"].append({"config": name, "precision": precision, "checkpointing": ckpt,
                                               "batch": batch, "how": f"measured ({args.device})", **cell})
                    print(f"{name} {precision} ckpt={ckpt} batch {batch}: {cell['peak_mib']:.0f} MiB "
                          f"({cell['cell_s']:.0f} s)", file=sys.stderr)
                    save()
                for batch in args.batches:
                    key = (name, precision, ckpt, batch, "estimated")
                    if batch in measured or key in done:
                        continue
                    report["training"].append({"config": name, "precision": precision, "checkpointing": ckpt,
                                               "batch": batch, "how": "estimated",
                                               "peak_mib": linear_in_batch(measured[1], measured[2], batch)})
                    save()
        for precision in args.precision:
            if any((r["config"], r["precision"]) == (name, precision) for r in report["inference"]):
                continue
            cmd = [sys.executable, __file__, "--infer-cell", f"{name},{precision},1", "--device", args.device,
                   "--tile", str(args.tile)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                raise SystemExit(f"{name} {precision} prediction: failed\n{out.stderr[-3000:]}")
            cell = json.loads(out.stdout.strip().splitlines()[-1])
            report["inference"].append({"config": name, "precision": precision, "tiles": 1, "tile": args.tile,
                                        **cell})
            save()

    rows = sorted(report["training"], key=lambda r: (r["config"], r["precision"], r["checkpointing"], r["batch"]))
    print(markdown(rows))
    for r in report["inference"]:
        print(f"prediction {r['config']} {r['precision']}: {r['peak_mib']:.0f} MiB per {r['tile']} px tile")
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
