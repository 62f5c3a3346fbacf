"""Training throughput of the real training step of each method (a benchmark, not a test).

For supervised, UniMatch and Co2S it times the engine's own ``train_step`` (the method's
``training_loss``, Fabric's backward with the requested precision, every optimiser's step) and
reports seconds per step (median of ``--steps`` after ``--warmup``), images per second, peak memory,
model FLOPs per step (``torch.utils.flop_counter`` around one whole step, forward and backward) and,
on a known GPU, the fraction of the device's peak that this reaches.

    python benchmarks/throughput.py                                   # tiny students, CPU, fp32 + bf16
    python benchmarks/throughput.py --precision 32-true --steps 5     # skip bf16 (slow on CPU)
    python benchmarks/throughput.py --config paper --device cuda      # ViT-B/16 pair, crop 512, 2+2

Configurations: ``tiny`` is the random-weight tiny pair of ``models/co2s-tiny`` (crop 128);
``paper`` is the architecture pair of ``models/co2s-vitb16`` (CLIP + DINOv3 ViT-B/16, attention-only
tuning) built with random weights, since timing does not depend on their values (crop 512); ``sat``
that of ``models/co2s-vitb16-sat-vitl16`` (the DINOv3 student a SAT-493M ViT-L/16).
Supervised and UniMatch train the first student alone; Co2S trains both.

Every (method, precision) cell runs in its own process so that peak resident memory is that cell's
alone. Batches come from the synthetic demo data written to a temporary folder at the crop size,
go through the trainer's datasets and are moved to the device before timing: the step is timed
without data loading (the trainer's loader workers overlap it with compute).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Benchmark this checkout's code even where the environment installed the package from elsewhere.
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402

from co2s.config.loader import load_config  # noqa: E402
from co2s.demo.synthetic import write_demo_dataset  # noqa: E402
from co2s.data.module import data_module  # noqa: E402
from co2s.engine.memory import LiveTensorBytes, fake_tensors  # noqa: E402
from co2s.engine.trainer import LogWindow, make_fabric, train_step, training_batches  # noqa: E402
from co2s.methods import Schedule, build_method  # noqa: E402
from co2s.models.summary import without_weights  # noqa: E402

CONFIGS = {"tiny": {"models": "models/co2s-tiny", "crop": 128},
           "paper": {"models": "models/co2s-vitb16", "crop": 512},
           "sat": {"models": "models/co2s-vitb16-sat-vitl16", "crop": 512}}
METHODS = ["supervised", "unimatch", "co2s"]
PRECISIONS = ["32-true", "bf16-mixed"]
BATCH_POOL = 2  # distinct batches cycled through the steps

# Dense peaks in TFLOP/s from NVIDIA's datasheets (bf16: tensor cores without sparsity; fp32: the
# plain FP32 figure, i.e. TF32 off, as torch's default float32 matmuls). The first name contained in
# torch.cuda.get_device_name() wins, so specific variants come before the SXM parts.
PEAK_TFLOPS = [
    ("H100 PCIe", {"bf16-mixed": 756.0, "32-true": 51.0}),
    ("H100 NVL", {"bf16-mixed": 835.0, "32-true": 60.0}),
    ("H200 NVL", {"bf16-mixed": 835.0, "32-true": 60.0}),
    ("H100", {"bf16-mixed": 989.0, "32-true": 67.0}),  # H100 SXM
    ("H200", {"bf16-mixed": 989.0, "32-true": 67.0}),  # H200 SXM
    ("A100", {"bf16-mixed": 312.0, "32-true": 19.5}),
]


def _cpu_flash_attention_flops(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's FLOP counter knows the CUDA attention kernels but not the CPU one, which would leave
# attention out of CPU counts; the same formulas make both devices count the same FLOPs.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flops,
}


class _TotalsOnly:
    """Stands in for FlopCounterMode's module tracker, which only splits counts by module: its
    hooks on module inputs fail on a no-grad forward that receives a view of a trainable parameter
    (the pseudo-label pass of a student with learnable queries). Everything counts as "Global"."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


@contextlib.contextmanager
def counting_flops() -> Iterator[FlopCounterMode]:
    """A FlopCounterMode for one whole training step: totals only, CPU attention counted, and
    nn.TransformerEncoderLayer's inference fast path off. That fast path (the no-grad eval pass)
    is one fused op whose matmuls the counter cannot see (and which fails on mixed dtypes under CPU
    autocast inside the counter); the regular path does the same arithmetic in ops it knows."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    counter.mod_tracker = _TotalsOnly()
    try:
        with counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The datasheet dense peak of this GPU at this precision; None for an unknown device."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peaks[precision]
    return None


def benchmark_config(args, method: str, precision: str, steps_total: int):
    """The demo config on the benchmark data with the chosen students, random weights, crop, batch,
    method, device and precision; single-student methods keep the first student only."""
    config_file = Path(args.data_root) / "benchmark.yaml"
    config = load_config(str(config_file), [
        f"train.crop_size={args.crop}", f"train.batch_size={args.batch}",
        f"train.iters={steps_total}", "train.num_workers=0", f"engine.accelerator={args.device}",
        "engine.devices=1", f"engine.precision={precision}",
        # every timed step a full step of the method: no supervised burn-in, lambda at its value
        "train.semi.burn_in=0", "train.semi.stability_ramp=0",
        "data.label_check=warn",  # a few synthetic tiles need not hold every class
    ])
    students = [without_weights(s).model_dump(mode="json") for s in config.model.students]
    if getattr(args, "checkpointing", False):
        for student in students:
            student["backbone"]["checkpointing"] = True
    return config.override({"train.method": method,
                            "model.students": students if method == "co2s" else students[:1]})


def device_batches(config, fabric, unlabelled_batch: int) -> list[dict]:
    """``BATCH_POOL`` micro-batches as the trainer's loaders collate them, already on the device;
    with unlabelled pairs when ``unlabelled_batch`` > 0."""
    data = data_module(config.data, config.in_channels, report=False)
    crops, pairs = data.setup_training(config.train, unlabelled_batch > 0).train_datasets(config.train)

    def collated(dataset, size: int) -> list[dict]:
        return [fabric.to_device(default_collate([dataset[i * size + j] for j in range(size)]))
                for i in range(BATCH_POOL)]

    return list(training_batches(collated(crops, config.train.batch_size),
                                 collated(pairs, unlabelled_batch) if pairs is not None else None))


def run_cell(args, method_name: str, precision: str) -> dict:
    count_flops = getattr(args, "count_flops", True)
    total = args.warmup + args.steps + count_flops  # the last step is the FLOP count
    config = benchmark_config(args, method_name, precision, total)
    fabric = make_fabric(config)
    fabric.launch()
    fabric.seed_everything(config.train.seed, verbose=False)
    estimate = getattr(args, "estimate_memory", False)
    if estimate:  # fake parameters cannot be moved by Module.to; they are made on the CPU already
        fabric.setup = functools.partial(fabric.setup, move_to_device=False)
    # live tensors counted from before the model exists (weights, optimiser states, batches, activations)
    tracking = getattr(args, "track_memory", False) or estimate
    tensors = LiveTensorBytes() if tracking else contextlib.nullcontext()
    # real batches (the data pipeline draws random crops and boxes: it needs values), counted as live
    t = config.train
    unlabelled = (t.semi.unlabelled_batch_size or t.batch_size) if config.uses_unlabelled else 0
    pool = device_batches(config, fabric, unlabelled)
    with fake_tensors() if estimate else contextlib.nullcontext(), tensors:
        if tracking:
            tensors.add(*(v for batch in pool for v in batch.values() if isinstance(v, torch.Tensor)))
        result = _run_steps(args, config, fabric, method_name, precision, total, count_flops, tensors, pool,
                            unlabelled)
    return {**result, "memory": "estimated (fake tensors)" if estimate else "measured" if tracking else None}


def _run_steps(args, config, fabric, method_name, precision, total, count_flops, tensors, pool,
               unlabelled: int) -> dict:
    method = build_method(config)
    method.setup(fabric)
    t = config.train
    batches = itertools.cycle(pool)
    on_gpu = fabric.device.type == "cuda"
    for module in method.modules.values():
        module.train()

    step, step_logs, schedule = 0, [], Schedule.for_run(config, total)

    def one_step() -> float:
        nonlocal step
        if on_gpu:
            torch.cuda.synchronize()
        window = LogWindow()
        start = time.perf_counter()
        train_step(fabric, method, batches, step, schedule, window)
        if on_gpu:
            torch.cuda.synchronize()
        step += 1
        step_logs.append(window.means())
        return time.perf_counter() - start

    # As the trainer runs steps (on a CPU the students in parallel threads), unless tensors are
    # counted or faked: those modes see only the operations of their own thread.
    counted = isinstance(tensors, LiveTensorBytes)
    with method.running() if not counted else contextlib.nullcontext():
        for _ in range(args.warmup):
            one_step()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        times = [one_step() for _ in range(args.steps)]
    flops = None
    if count_flops:  # outside running(): the counting mode sees only its own thread's operations
        with counting_flops() as counter:
            one_step()
        flops = counter.get_total_flops()
    # the peaks cover the timed steps and the step whose FLOPs were counted
    peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    seconds = statistics.median(times)
    device_name = torch.cuda.get_device_name() if on_gpu else None
    peak = peak_tflops(device_name, precision) if on_gpu else None
    return {
        "method": method_name, "precision": precision, "students": [s.name for s in config.model.students],
        "crop": t.crop_size, "labelled_per_step": t.batch_size, "unlabelled_per_step": unlabelled,
        "parallel_models": None if counted else method.parallel,
        "step_s": seconds, "step_s_all": times,
        "labelled_images_per_s": t.batch_size / seconds,
        "total_images_per_s": (t.batch_size + unlabelled) / seconds,
        "peak_gpu_mib": peak_gpu_mib, "peak_rss_mib": peak_rss_mib,
        "peak_tensor_mib": {d: b / 2**20 for d, b in tensors.peak.items()} if isinstance(tensors, LiveTensorBytes)
        else None,
        "gflops_per_step": flops / 1e9 if flops else None,
        "achieved_tflops": flops / seconds / 1e12 if flops else None,
        "peak_tflops": peak, "percent_of_peak": 100 * flops / seconds / 1e12 / peak if peak and flops else None,
        "trainable_m": sum(p.numel() for m in method.modules.values() for p in m.parameters()
                           if p.requires_grad) / 1e6,
        "checkpointing": bool(getattr(args, "checkpointing", False)),
        "step_logs": step_logs[args.warmup:],  # the timed steps', then the counted step's loss terms
    }


def hardware(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "gpu": None}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def write_benchmark_data(root: Path, config_name: str, crop: int, batch: int) -> None:
    """Demo tiles at the crop size (enough for ``BATCH_POOL`` batches) and the config every cell
    loads: the demo preset with the benchmark's students, on these tiles only."""
    n = batch * BATCH_POOL
    write_demo_dataset(root, tile_size=crop, n_labelled=n, n_unlabelled=max(n, 2), n_val=0, n_test=0,
                       n_scenes=0)
    config = {"preset": ["demo", CONFIGS[config_name]["models"]],
              "data": {"root": str(root), "splits": {"val": None, "test": None}}}
    (root / "benchmark.yaml").write_text(json.dumps(config))  # JSON is YAML


def markdown_table(results: list[dict]) -> str:
    def number(value, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    lines = ["| method | precision | s/step | labelled img/s | total img/s | peak MiB | GFLOPs/step | % of peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['precision']} | failed | | | | | |")
            continue
        memory = r["peak_gpu_mib"] if r["peak_gpu_mib"] is not None else r["peak_rss_mib"]
        lines.append(f"| {r['method']} | {r['precision']} | {r['step_s']:.3f} | {r['labelled_images_per_s']:.2f} "
                     f"| {r['total_images_per_s']:.2f} | {memory:.0f} | {number(r['gflops_per_step'], '.1f')} "
                     f"| {number(r['percent_of_peak'], '.1f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(CONFIGS), default="tiny")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=PRECISIONS)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--crop", type=int, help="crop size (default: 128 tiny, 512 paper)")
    parser.add_argument("--batch", type=int, default=2, help="labelled and unlabelled images per step each")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the ViT blocks")
    parser.add_argument("--track-memory", action="store_true",
                        help="also count the peak bytes of live tensors per device (co2s.engine.memory)")
    parser.add_argument("--no-flops", dest="count_flops", action="store_false", help="skip the FLOP-counted step")
    parser.add_argument("--estimate-memory", action="store_true",
                        help="run the steps on fake tensors: peak memory estimated in seconds, no timing")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/"
                        "throughput_<config>_<device>.json)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: method,precision
    parser.add_argument("--data-root", help=argparse.SUPPRESS)  # internal: written by the parent
    args = parser.parse_args()
    args.crop = args.crop or CONFIGS[args.config]["crop"]
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("need --steps >= 1, --warmup >= 0, --batch >= 1")

    if args.cell:
        method, precision = args.cell.split(",")
        print(json.dumps(run_cell(args, method, precision)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")

    results = []
    with tempfile.TemporaryDirectory(prefix="co2s-throughput-") as tmp:
        write_benchmark_data(Path(tmp), args.config, args.crop, args.batch)
        for method in args.methods:
            for precision in args.precision:
                cmd = [sys.executable, __file__, "--cell", f"{method},{precision}", "--data-root", tmp,
                       "--config", args.config, "--device", args.device, "--crop", str(args.crop),
                       "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                       *(["--checkpointing"] if args.checkpointing else []),
                       *(["--track-memory"] if args.track_memory else []),
                       *(["--estimate-memory"] if args.estimate_memory else []),
                       *([] if args.count_flops else ["--no-flops"])]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                if out.returncode != 0:
                    print(f"{method} {precision}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
                    results.append({"method": method, "precision": precision, "error": out.stderr[-3000:]})
                    continue
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"{method} {precision}: {results[-1]['step_s']:.3f} s/step", file=sys.stderr)

    print(markdown_table(results))
    report = {
        "benchmark": "throughput", "config": args.config, "device": args.device, "crop": args.crop,
        "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "checkpointing": args.checkpointing,
        "hardware": hardware(args.device),
        "note": "One optimiser step of the engine's train_step on random-weight students; data loading "
                "excluded (batches prefetched on the device). Images per step: labelled = batch, "
                "unlabelled = batch for unimatch/co2s (each also forwards a CutMix-source batch of the "
                "same size without gradient; that is not counted as images but is in the FLOPs). "
                "Every step is a full step of its method (burn-in 0, lambda at its value from step 0). "
                "FLOPs: torch.utils.flop_counter over one step (forward + backward + no-grad "
                "pseudo-label forwards). Peak memory: torch.cuda.max_memory_allocated over the timed "
                "steps and the counted one on GPU, else the cell process's peak RSS. % of peak: achieved FLOP/s over "
                "NVIDIA datasheet dense peaks (bf16 tensor core; fp32 without TF32), null for unknown "
                "devices and CPU.",
        "results": results,
    }
    out_path = args.out or REPO / "benchmarks" / "results" / f"throughput_{args.config}_{args.device}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
