"""Forward and forward+backward time and peak memory of each student (a benchmark, not a test).

Every (student, size) cell runs in its own process so that peak resident memory is that cell's
alone. On CPU it reports fp32; on a GPU also bf16 autocast throughput and peak memory.

    python benchmarks/student_speed.py                       # tiny and ViT-B/16 students, CPU
    python benchmarks/student_speed.py --device cuda --sizes 512 --batch 4
    python benchmarks/student_speed.py --out benchmarks/results/student_speed.json

Weights are random (the architectures are the real ones); timing does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

STUDENTS = {
    "clip-tiny": {"kind": "clip", "arch": "tiny", "guidance": "text"},
    "dinov3-tiny": {"kind": "dinov3", "arch": "tiny", "guidance": "queries"},
    "clip-vitb16": {"kind": "clip", "arch": "vit-b16", "guidance": "text"},
    "dinov3-vitb16": {"kind": "dinov3", "arch": "vit-b16", "guidance": "queries"},
}


def run_cell(name: str, size: int, batch: int, device: str, precision: str, repeats: int) -> dict:
    import torch

    from co2s.config.loader import load_config
    from co2s.models.student_factory import build_student

    spec = STUDENTS[name]
    student_cfg = {"name": name, "backbone": {"kind": spec["kind"], "arch": spec["arch"]},
                   "guidance": spec["guidance"], "text": {"prototypes": "random"}}
    config = load_config("demo", ["train.method=supervised", "model.name=students",
                                  f"model.students=[{student_cfg!r}]"])
    model = build_student(config.model.students[0], config.data).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, config.data.num_classes, (batch, size, size), device=device)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward(train: bool):
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            return model(x) if train else model.eval()(x)

    def timed(fn) -> float:
        fn()  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - start) / repeats

    def fwd():
        with torch.no_grad():
            forward(train=False)

    def fwd_bwd():
        model.train()
        loss = torch.nn.functional.cross_entropy(forward(train=True).float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_fwd = timed(fwd)
    t_train = timed(fwd_bwd)
    result = {
        "student": name, "size": size, "batch": batch, "device": device, "precision": precision,
        "forward_s": t_fwd, "forward_backward_s": t_train,
        "train_images_per_s": batch / t_train, "infer_images_per_s": batch / t_fwd,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    }
    if device.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write all results as JSON")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: name,size,precision
    args = parser.parse_args()

    if args.cell:
        name, size, precision = args.cell.split(",")
        print(json.dumps(run_cell(name, int(size), args.batch, args.device, precision, args.repeats)))
        return

    precisions = ["fp32", "bf16"] if args.device.startswith("cuda") else ["fp32"]
    results = []
    print(f"{'student':<15}{'size':>6}{'prec':>6}{'fwd s':>9}{'fwd+bwd s':>11}{'train img/s':>13}{'peak MiB':>10}")
    for name in args.students:
        for size in args.sizes:
            for precision in precisions:
                cmd = [sys.executable, __file__, "--cell", f"{name},{size},{precision}", "--batch",
                       str(args.batch), "--device", args.device, "--repeats", str(args.repeats)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{name} {size} {precision}: failed\n{out.stderr[-2000:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(r)
                peak = r.get("peak_gpu_mib", r["peak_rss_mib"])
                print(f"{name:<15}{size:>6}{precision:>6}{r['forward_s']:>9.3f}{r['forward_backward_s']:>11.3f}"
                      f"{r['train_images_per_s']:>13.2f}{peak:>10.0f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
