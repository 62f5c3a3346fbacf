"""The ``co2s`` command line: a thin layer over the Python API, one subcommand per job.

Every error a user or the machine causes ends in one line ``error: ...`` on stderr and an exit
code (:func:`error_message`, the one place that words them); ``--debug`` or ``CO2S_DEBUG=1`` adds
the traceback. Only a bug in co2s prints a traceback by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from co2s.version import __version__
from co2s.errors import Co2sError, Terminated
from co2s.warnings_once import each_warning_once

#: exit codes (README.md, "Errors and exit codes"); 0: success
EXIT_ENVIRONMENT = 1  # the machine: disk full, read-only, permissions, memory (also: predict inputs failed)
EXIT_USER = 2  # the command or its inputs: arguments, config, data, checkpoint
EXIT_BUG = 3  # an unexpected exception: a bug in co2s (traceback printed)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
EXIT_TERMINATED = 143  # SIGTERM (128 + 15)

#: OSError by errno: what could not be done to the file, and why, in plain words
_OS_PROBLEMS = {
    errno.ENOSPC: ("cannot write", "no space left on device"),
    errno.EDQUOT: ("cannot write", "disk quota exceeded"),
    errno.EFBIG: ("cannot write", "file too large for its file system"),
    errno.EROFS: ("cannot write", "read-only file system"),
    errno.EACCES: ("cannot access", "permission denied"),
    errno.EPERM: ("cannot access", "operation not permitted"),
    errno.ENOENT: ("cannot find", "no such file or folder"),
    errno.EISDIR: ("cannot use", "it is a folder, not a file"),
    errno.ENOTDIR: ("cannot use", "a part of its path is a file, not a folder"),
    errno.EEXIST: ("cannot create", "it exists already, and is not a folder"),  # mkdir(exist_ok=True)
    errno.ENOTEMPTY: ("cannot replace", "the folder is not empty"),
    errno.ENAMETOOLONG: ("cannot use", "file name too long"),
    errno.EMFILE: ("cannot open", "too many open files (raise the limit, e.g. ulimit -n 4096)"),
    errno.ENFILE: ("cannot open", "too many open files on this system"),
    errno.EIO: ("cannot read or write", "input/output error (a failing disk or a lost network file system?)"),
    errno.ENOMEM: ("cannot continue", "out of memory"),
    errno.EPIPE: ("cannot write", "the output pipe was closed by its reader"),
}


# Problems of one path (not of the device or the system): without the path, say where they arose.
_PATH_PROBLEMS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
                  errno.ENOTEMPTY, errno.ENAMETOOLONG}


def _one_line(text: str) -> str:
    """A message on one line: the lines of a multi-line one (a config's list of problems) joined."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    out = lines[0] if lines else ""
    for line in lines[1:]:
        out += (" " if out.endswith(":") else "; ") + line
    return out


def error_message(exc: BaseException) -> tuple[str, int, bool]:
    """The one line (without ``error: ``), the exit code, and whether it is a bug (whose traceback
    must be seen) for an exception that ends a command: the one place that decides them."""
    if isinstance(exc, Co2sError):
        return _one_line(str(exc)), EXIT_USER, False
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)", EXIT_TERMINATED, False
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED, False
    if _out_of_memory(exc):
        first = _one_line(str(exc)).split(". ")[0]
        said = first if "memory" in first.lower() else "out of memory" + (f": {first}" if first else "")
        return (f"{said}; try a smaller batch size or tile (train.batch_size, eval.batch_size, "
                "--batch-size, --tile)", EXIT_ENVIRONMENT, False)
    if isinstance(exc, OSError):
        name = exc.filename
        verb, problem = _OS_PROBLEMS.get(exc.errno, ("cannot use", (exc.strerror or "").lower()))
        if exc.errno is None:  # a library's OSError (rasterio, requests) with its own message
            problem = _one_line(str(exc)) or type(exc).__name__
        if name is None:  # a deep call that knew no path: "no such file" alone names nothing
            where = _raised_in(exc) if exc.errno in _PATH_PROBLEMS else ""  # not "no space left"
            return problem + where, EXIT_ENVIRONMENT, False
        target = os.fsdecode(name) + (f" -> {os.fsdecode(exc.filename2)}" if exc.filename2 else "")
        return f"{verb} {target}: {problem}", EXIT_ENVIRONMENT, False
    what = f"{type(exc).__name__}: {_one_line(str(exc))}".rstrip(": ")
    return (f"internal error ({what}): a bug in co2s {__version__}; please report it with the traceback "
            "above", EXIT_BUG, True)


def _raised_in(exc: BaseException) -> str:
    """`` (raised in package/module.py)`` for the innermost frame of ``exc``'s traceback, or ``""``."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if not frames:
        return ""
    where = Path(frames[-1].filename)
    return f" (raised in {where.parent.name}/{where.name}; --debug shows the traceback)"


def _out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError (a GPU) and its CPU allocator's failure."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """``--debug``, or the environment variable ``CO2S_DEBUG`` set to anything but 0/false/no."""
    if args is not None and getattr(args, "debug", False):
        return True
    return os.environ.get("CO2S_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    help_ = "preset name (see `co2s presets`) or YAML config path"
    if required:
        p.add_argument("config", help=help_)
    else:
        p.add_argument("config", nargs="?", help=help_ + "; default: the config stored in the checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.iters=500 (repeatable)")


def _add_prediction_arg(p: argparse.ArgumentParser, help_: str) -> None:
    p.add_argument("--prediction", help=f"{help_} (default, or auto: the model's own, the one its training "
                                        "chose on validation)")
    p.add_argument("--student", dest="student_alias", help=argparse.SUPPRESS)  # the old name


def _prediction(args) -> str | None:
    """``--prediction``, or its deprecated alias ``--student`` (with a message)."""
    if args.student_alias is None:
        return args.prediction
    if args.prediction is not None and args.prediction != args.student_alias:
        raise Co2sError(f"--student {args.student_alias} and --prediction {args.prediction} disagree; "
                        "give --prediction only")
    print("warning: --student is deprecated; use --prediction", file=sys.stderr)
    return args.student_alias


def _checkpoint(args) -> str:
    """``--checkpoint``, or the positional form ``co2s export CHECKPOINT`` (kept as an alias)."""
    given = [c for c in (args.checkpoint, args.checkpoint_positional) if c is not None]
    if not given:
        raise Co2sError("give the checkpoint or model folder with --checkpoint")
    if len(set(given)) > 1:
        raise Co2sError(f"two checkpoints given: {given[1]} and --checkpoint {given[0]}")
    return given[0]


def cmd_train(args) -> int:
    from co2s import api

    overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
    config = api.load_config(args.config, overrides)
    changes = _model_changes(args.config, config)
    if changes:
        print(changes)
    try:
        run = api.train(config, progress=not args.no_progress, extend=args.extend)
    except KeyboardInterrupt as exc:
        from co2s.run_folder import RunFolder

        said, code = error_message(exc)[:2]
        latest = RunFolder(config.run_dir).latest
        if latest.is_file():
            print(f"{said}; rerun the same command to resume from {latest}", file=sys.stderr)
        else:
            print(f"{said} before the first checkpoint: nothing to resume yet; rerunning the "
                  f"command starts {config.run_dir} from step 0", file=sys.stderr)
        return code
    if not run.is_global_zero:  # the other ranks of a multi-process run stay quiet
        return 0
    msg = f"finished {run.steps} steps in {run.run_dir}"
    if run.best:
        msg += f"; best {run.best['split']} mIoU {run.best['mIoU']:.2f} at step {run.best['step']}"
    print("\n".join([msg, *run.notes]))
    return 0


def cmd_evaluate(args) -> int:
    from co2s import api
    from co2s.evaluation.run import print_report

    config = api.load_config(args.config, args.overrides) if args.config else None
    result = api.evaluate_checkpoint(args.checkpoint, config, args.split, args.out, args.device,
                                     progress=not args.no_progress, prediction=_prediction(args),
                                     overrides=None if args.config else args.overrides, overwrite=args.overwrite)
    print_report(result)
    return 0


def cmd_predict(args) -> int:
    from co2s import api

    results = api.predict(args.checkpoint, args.inputs, args.out, device=args.device,
                          prediction=_prediction(args), progress=not args.no_progress, tile=args.tile,
                          overlap=args.overlap, batch_size=args.batch_size, precision=args.precision,
                          tta=args.tta, confidence=args.confidence, preview=args.preview,
                          overviews=args.overviews, polygons=args.polygons, min_area=args.min_area,
                          simplify=args.simplify, overwrite=args.overwrite)
    failed = [r for r in results if r.error]
    for r in results:
        for note in r.warnings:
            print(f"warning: {note}", file=sys.stderr)
        print(f"error: {_one_line(r.error)}" if r.error else f"{r.source} -> {', '.join(map(str, r.outputs))}",
              file=sys.stderr if r.error else sys.stdout)
    print(f"{len(results) - len(failed)} of {len(results)} image(s) predicted into {args.out}")
    return 1 if failed else 0


def cmd_suggest(args) -> int:
    from co2s import api

    config = api.load_config(args.config, args.overrides) if args.config else None
    r = api.suggest(args.checkpoint, args.out, config, budget=args.budget, score=args.score, pool=args.pool,
                    exclude=args.exclude, window=args.window, spacing=args.spacing, sheet=args.sheet,
                    prediction=_prediction(args), device=args.device, batch_size=args.batch_size,
                    overwrite=args.overwrite, progress=not args.no_progress,
                    overrides=None if args.config else args.overrides)
    if r["kind"] == "tiles":
        print(f"{r['scored_tiles']} tile(s) ranked ({r['excluded_tiles']} of {r['pool_tiles']} already labelled or "
              f"held out) by the {r['score']} score of prediction {r['prediction']}")
    else:
        print(f"{r['candidate_windows']} window(s) of {r['window']} px ranked over {len(r['rasters'])} raster(s) "
              f"by the {r['score']} score of prediction {r['prediction']}; {r['suggested']} taken at least "
              f"{r['spacing']} px apart")
    for s in r["suggestions"][:10]:
        where = s["name"] if "window" not in s else (f"{Path(s['name']).name} x {s['window']['x']} "
                                                      f"y {s['window']['y']}")
        print(f"  {s['rank']:>3}. {where}  score {s['score']:.3f}")
    if r["suggested"] > 10:
        print(f"  ... {r['suggested'] - 10} more")
    if r["suggested"] < r["budget"]:
        print(f"note: only {r['suggested']} of --budget {r['budget']} found room"
              + (" (fewer windows fit at that --spacing)" if r["kind"] == "scenes" else ""))
    for what, path in r["outputs"].items():
        print(f"{what}: {path}")
    return 0


def cmd_splits(args) -> int:
    from co2s import api

    config = api.load_config(args.config, args.overrides) if args.config else None
    info = api.make_splits(args.source, args.ratio, args.seed, args.out, config=config, root=args.root,
                           stratify=args.stratify, by=args.by, block=args.block, buffer=args.buffer,
                           attribute=args.attribute, layer=args.layer, where=args.where)
    if info["kind"] == "vector":
        lab, held, drop = info["labelled"], info["held_out"], info["dropped"]
        dropped = f" ({drop['features']} dropped by --buffer)" if drop["features"] else ""
        print(f"{lab['features']} labelled + {held['features']} held-out features of "
              f"{info['total']['features']}{dropped}; labelled {info['by']} share {100 * lab['share']:.1f} % "
              f"(ratio {info['ratio']}, seed {info['seed']}) -> {info['out_dir']}/labelled.gpkg, "
              "held_out.gpkg, split.json")
        return 0
    print(f"{info['labelled']} labelled + {info['unlabelled']} unlabelled of {info['total']} "
          f"(ratio {info['ratio']}, seed {info['seed']}) -> {info['out_dir']}/labelled.txt, unlabelled.txt")
    return 0


def cmd_export(args) -> int:
    from co2s import api

    written = api.export(_checkpoint(args), args.out, prediction=_prediction(args), onnx=args.onnx, tile=args.tile,
                         scale=args.scale, logits=args.logits, gsd=args.gsd)
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0


def cmd_demo(args) -> int:
    from co2s.demo import run_demo

    run_demo(args.out, args.overrides, args.seed, progress=not args.no_progress, setting=args.setting,
             labelled=args.labelled)
    return 0


def cmd_model_summary(args) -> int:
    import json

    from co2s import api
    from co2s.models.summary import format_summary

    summary = api.model_summary(api.load_config(args.config, args.overrides), random_weights=args.random_weights,
                                input_size=args.input_size)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_embed_text(args) -> int:
    from co2s import api

    path, shape = api.embed_text(api.load_config(args.config, args.overrides), args.out, clip=args.clip,
                                 tokenizer=args.tokenizer, template=args.template)
    print(f"{shape[0]} class prototypes of dimension {shape[1]} -> {path}")
    return 0


def cmd_prepare(args) -> int:
    from co2s import api

    s = api.prepare(args.dataset, args.source, args.out, splits=args.splits, link=not args.copy,
                    progress=not args.no_progress)
    counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items())
    how = ", ".join(f"{k} {v}" for k, v in s["transfer"].items())
    print(f"{s['dataset']}: {s['files']['images']} images, {s['files']['labels']} labels ({counts}) "
          f"-> {s['out']} ({how})")
    if s["fallback"]:
        print(f"note: {s['fallback']}")
    for rel, n in s["lists"].items():
        print(f"  {rel}: {n} samples")
    for tile, n in s.get("unknown_colour_pixels", {}).items():
        print(f"warning: tile {tile}: {n} label pixels in colours outside the palette (ignored)")
    for m in s["missing"]:
        print(f"missing for the preset: {m} (give the authors' lists with --splits, or make them with co2s splits)")
    print(f"next: co2s train {s['dataset']} --set data.root={s['out']}")
    return 0


def cmd_report(args) -> int:
    from co2s import api

    print(f"report written to {api.report(args.run, args.out)}")
    return 0


def cmd_presets(args) -> int:
    from co2s import api

    if args.diff:
        if not args.name:
            raise Co2sError("--diff needs a preset name or config file")
        print(_model_changes(args.name, api.load_config(args.name, args.overrides), unchanged_too=True))
        return 0
    if args.name:
        print(api.preset(args.name, args.overrides), end="")
        return 0
    from co2s.config.loader import preset_description

    names = api.presets()
    width = max(map(len, names))
    print("\n".join(f"{name:<{width}}  {preset_description(name)}" for name in names))
    return 0


def _model_changes(source, config, unchanged_too: bool = False) -> str:
    """What ``config`` changes in the model of its base preset, one line per key ('' for none,
    unless ``unchanged_too``): shown before training, so a change to the paper's pair is seen,
    never found out after."""
    from co2s.config.loader import changes_against_preset

    preset, changes = changes_against_preset(source, config)
    if not changes:
        if not unchanged_too:
            return ""
        return f"the model is preset {preset}'s as it is" if preset else ("nothing to compare: the config is a preset itself or its model comes from no preset")
    return f"the model differs from preset {preset}'s:\n" + "\n".join(f"  {c}" for c in changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="co2s",
        description="Semi-supervised semantic segmentation of remote-sensing imagery.",
        epilog="Errors end in one line 'error: ...' and exit code 1 (disk full, read-only folder, "
        "permissions, out of memory), 2 (arguments, config, data, checkpoint) or 130 (interrupted); "
        "3 and a traceback mean a bug in co2s. --debug (or CO2S_DEBUG=1) shows the traceback of "
        "every error. See README.md, 'Errors and exit codes'.",
    )
    parser.add_argument("--version", action="version", version=f"co2s {__version__}")
    debug_help = "on an error, also print the full traceback (as CO2S_DEBUG=1 does)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # --debug also after the command (co2s train CONFIG --debug); SUPPRESS keeps the global one
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = command("train", help="train a model from a config; resumes an existing run directory",
                description="Train a model from a preset or YAML config into a run folder: config.yaml, "
                "run_info.jsonl, metrics.jsonl, latest.ckpt (every train.ckpt_every steps and before each "
                "validation), best.ckpt (best validation mIoU), burn_in.ckpt, and the run lock .co2s.lock. "
                "Running the same command again resumes from latest.ckpt (a different config in that folder is "
                "refused: give --out a new folder); Ctrl-C saves the current step first. Prints what the "
                "config changes in its base preset's model. See docs/training.md.")
    _add_config_args(p)
    p.add_argument("--out", help="run directory (default: runs/<name>, or out_dir in the config)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars: one plain line per train.log_every steps (also when output is not a terminal)")
    p.add_argument("--extend", type=int, metavar="ITERS",
                   help="continue the run (finished or not) to a new total of ITERS steps: the burn-in keeps its "
                   "step, learning-rate decay and ramps continue towards ITERS from the current step "
                   "(docs/training.md, 'Extending a run'); rerun with the same --extend to resume it")
    p.set_defaults(func=cmd_train)

    p = command(
        "prepare", help="a paper dataset's official release converted to its preset's layout",
        description="Build OUT/images, OUT/labels and OUT/splits/ as preset DATASET reads them, from the "
        "official release in SOURCE: loveda (Zenodo's Train/, Val/, Test/ folders or their zips), potsdam "
        "(ISPRS 2_Ortho_RGB/ and 5_Labels_all_noBoundary/ or 5_Labels_all/, cut into crops of the preset's "
        "crop size). Source files are hard-linked (symbolic links across file systems) and never modified; "
        "mask values are kept as released; a rerun into the same folder is idempotent; a folder holding "
        "other data is refused. See docs/datasets/.")
    p.add_argument("dataset", metavar="DATASET", help="loveda or potsdam")
    p.add_argument("source", metavar="SOURCE", help="folder of the official release (LoveDA: the folder "
                   "holding Train/ and Val/ or Train.zip and Val.zip; Potsdam: holding 2_Ortho_RGB/)")
    p.add_argument("--out", metavar="DIR", help="the prepared tree (default: the preset's data.root, "
                   "${CO2S_DATA_DIR:-data}/DATASET, so that co2s train DATASET finds it)")
    p.add_argument("--splits", metavar="LISTS", help="folder of the authors' split lists (e.g. the Co2S "
                   "code's splits/loveda): every line is checked against the prepared tree, then the lists "
                   "are copied under OUT/splits/")
    p.add_argument("--copy", action="store_true", help="copy the source files instead of linking them")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = command("report", help="plots and an HTML page of a training run: losses, validation mIoU, evaluations",
                description="Draw the curves of a run folder (every loss term, validation mIoU per prediction, "
                "confident ratio, teaching shares, learning rate) and, for each metrics_<split>.json in it, "
                "per-class IoU and the confusion matrix, into PNGs and one self-contained index.html. Writes "
                "only into a new or empty folder or an earlier report's folder. Needs matplotlib: pip install "
                "'co2s[report]'. See docs/report.md.")
    p.add_argument("run", metavar="RUN", help="a run folder written by co2s train (holds metrics.jsonl)")
    p.add_argument("--out", metavar="DIR", help="folder for index.html and the PNGs (default: RUN/report)")
    p.set_defaults(func=cmd_report)

    p = command(
        "evaluate", help="sliding-window evaluation of a checkpoint: mIoU, IoU, OA, F1",
        description="Score a checkpoint or an exported model folder on a split and write "
        "metrics_<split>.json (metrics_test.json, metrics_val.json, ...): beside a training "
        "checkpoint (its run folder); for a model folder, in the current folder (a model folder is "
        "never written into unless --out names it); or in --out. An existing metrics file is "
        "replaced only with --overwrite. See docs/training.md.")
    _add_config_args(p, required=False)
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by co2s train, or a folder "
                   "written by co2s export")
    p.add_argument("--split", default="test", choices=["test", "val", "labelled", "train"],
                   help="which data.splits entry to score (default: test)")
    p.add_argument("--out", metavar="DIR", help="folder for metrics_<split>.json, or a .json file path "
                   "(default: beside a training checkpoint; the current folder for a model folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing metrics file of the split")
    _add_prediction_arg(p, "which prediction leads the report: a model's name, or for two students "
                        "mean or confidence; all are reported")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, auto (default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = command(
        "predict", help="predict images and whole scenes of any size (GeoTIFF in, GeoTIFF out)",
        description="Plain PNG/JPEG/BMP images give an index PNG and a colour PNG. Other rasters "
        "(GeoTIFF, VRT, ...), and PNG/JPEG with a world file, are streamed in windows into "
        "<stem>_classes.tif: uint8 classes placed as the input is (CRS and transform, GCPs or RPCs), nodata 255 where the input is nodata, the palette as "
        "colour table. Overlapping tiles are blended with a smooth (Hann) weight. Every output path "
        "is checked before anything is predicted: an output that is one of the inputs or that two "
        "inputs would both write stops the command, and so does an existing file unless "
        "--overwrite is given; nothing is written then. See docs/prediction.md.")
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by co2s train, or a folder "
                   "written by co2s export")
    p.add_argument("inputs", nargs="+", help="image or raster files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder: <stem>.png and <stem>_color.png for "
                   "plain images, <stem>_classes.tif (and _confidence.tif, _preview.png, _polygons.gpkg) for rasters")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (e.g. of an "
                   "earlier prediction); an input is never replaced")
    _add_prediction_arg(p, "a model's name, or for two students the fusion mean / confidence")
    p.add_argument("--tile", type=int, help="tile size in pixels (default: eval.window or train.crop_size)")
    p.add_argument("--overlap", type=float, help="overlap of neighbouring tiles: pixels (>= 1) or a "
                   "fraction of the tile (< 1); default: from eval.stride, else 1/6 of the tile")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default: eval.batch_size)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, auto (default)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision (fp16 on GPUs only; default fp32)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average with the "
                   "horizontally mirrored tiles (twice the compute)")
    p.add_argument("--confidence", action="store_true",
                   help="also write <stem>_confidence.tif (float32 max probability, NaN as nodata)")
    p.add_argument("--preview", action="store_true", help="also write <stem>_preview.png, a colour "
                   "preview at most 2048 px on its longer side")
    p.add_argument("--overviews", action="store_true", help="add overviews to the GeoTIFF outputs")
    p.add_argument("--polygons", nargs="?", const="gpkg", choices=["gpkg", "geojson"],
                   help="also write <stem>_polygons.gpkg (or .geojson with --polygons geojson): one polygon "
                   "per connected region of a class, with class_id, class, area (CRS units squared), mean "
                   "confidence and pixels, in the raster's CRS; neighbours share their edges (no gaps or "
                   "overlaps). Rasters only, any size")
    p.add_argument("--min-area", type=float, default=0.0, help="with --polygons: regions smaller than this "
                   "(CRS units squared, e.g. m2) join their largest neighbour, as gdal_sieve does")
    p.add_argument("--simplify", type=float, default=0.0, help="with --polygons: simplification tolerance "
                   "(CRS units), applied to all polygons together so shared edges stay shared")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = command(
        "suggest", help="what to label next: tiles or scene windows ranked by the model's uncertainty",
        description="Predict the unlabelled tiles (or scenes) with a trained model and rank them by how "
        "unsure it is there: for two students the share of pixels where they disagree plus the mean "
        "entropy of the fused prediction over ln K; for one model that entropy alone (--score for the "
        "others). Tiles: the pool (default data.splits.unlabelled) minus the labelled, val and test lists "
        "and --exclude; writes OUT/suggestions.txt (the top --budget tiles as list-file lines) and "
        "OUT/scores.csv (every tile). Scenes (data.scenes): windows of --window pixels, scored outside the "
        "labelled polygons, none touching a validation/test region, at least --spacing pixels apart; writes "
        "OUT/suggestions.gpkg (the windows in the raster's CRS, for QGIS). Both write OUT/contact_sheet.png "
        "(image, prediction, per-pixel score of the top suggestions) and OUT/suggest.json. Existing outputs "
        "are replaced only with --overwrite. See docs/suggest.md.")
    _add_config_args(p, required=False)
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by co2s train, or a folder written by "
                   "co2s export (give CONFIG for a model folder: it carries no data config)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the suggestions")
    p.add_argument("--budget", type=int, default=10, help="how many tiles or windows to suggest (default 10)")
    p.add_argument("--score", default="default", choices=["default", "entropy", "margin", "disagreement", "balanced"],
                   help="default: disagreement + entropy (two students) or entropy (one model); entropy, margin "
                   "(1 - gap of the two most probable classes), disagreement (two students) alone; balanced: "
                   "the default weighed up on pixels of rarely predicted classes")
    p.add_argument("--pool", action="append", metavar="LIST", help="tiles: list file or folder of the "
                   "tiles to rank (repeatable; default data.splits.unlabelled)")
    p.add_argument("--exclude", action="append", metavar="FILE", help="what not to suggest, e.g. what is being "
                   "labelled now (repeatable): tiles: a list file or folder (the labelled, val and test lists are "
                   "always excluded); scenes: a vector file of areas, such as an earlier suggestions.gpkg (labelled "
                   "polygons and validation/test regions are always excluded)")
    p.add_argument("--window", type=int, help="scenes: window side in pixels, a multiple of 4 (default: the "
                   "model's tile)")
    p.add_argument("--spacing", type=int, help="scenes: least gap in pixels between two suggested windows "
                   "(default: one window)")
    p.add_argument("--sheet", type=int, default=12, help="suggestions shown in contact_sheet.png (default 12; "
                   "0: none)")
    _add_prediction_arg(p, "the prediction whose entropy is scored: a model's name, or for two students mean "
                        "or confidence")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default: eval.batch_size)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, auto (default)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier suggestion")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_suggest)

    p = command(
        "splits", help="seeded labelled/unlabelled split lists, or labelled/held-out vector label files",
        description="Tiles: labelled.txt and unlabelled.txt for a labelled ratio. A vector label file "
        "(.gpkg, .geojson, .shp, ...): labelled.gpkg (for data.scenes.labels) and held_out.gpkg (for "
        "data.scenes.val / test) by feature count or area, optionally in spatial blocks and "
        "stratified by class. Both write split.json; the same seed gives identical files. See "
        "docs/data.md.")
    p.add_argument("source", nargs="?", help="training list file or folder (default: data.splits.train), "
                   "or a vector label file (default with --config: data.scenes.labels.vector)")
    p.add_argument("--config", help="preset or YAML: data root, ID format and label handling")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of --config (repeatable), e.g. data.root=/data/ai4mars")
    p.add_argument("--ratio", required=True, help="labelled fraction, e.g. 1/8 or 0.125")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0): the same seed, source "
                   "and ratio give byte-identical files; another seed, another labelled subset")
    p.add_argument("--stratify", action="store_true", help="keep the share of each (dominant) class")
    p.add_argument("--root", help="data root for mask paths in SOURCE (without --config)")
    p.add_argument("--out", required=True, help="folder for labelled.txt, unlabelled.txt (vector: "
                   "labelled.gpkg, held_out.gpkg) and split.json")
    p.add_argument("--by", choices=["count", "area"], help="vector: the ratio is of the features' count or "
                   "area (default: area)")
    p.add_argument("--block", type=float, help="vector: split whole square blocks of this size (CRS units, "
                   "e.g. metres), each feature in the block holding its representative point")
    p.add_argument("--buffer", type=float, help="vector: drop held-out features closer than this (CRS "
                   "units) to a labelled one")
    p.add_argument("--attribute", help="vector: the class attribute (stratification, per-class counts; "
                   "default with --config: data.scenes.labels.attribute)")
    p.add_argument("--layer", help="vector: the layer to read (default: the file's only layer)")
    p.add_argument("--where", help="vector: only features matching this OGR SQL filter")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_splits)

    p = command(
        "export", help="a model folder to share (weights-only safetensors + small config); --onnx adds ONNX",
        description="Write DIR/model.safetensors (weights only: no optimiser state) and "
        "DIR/co2s_model.json (classes, palette, bands, scaling, tiling, architectures, prediction "
        "mode, training config) and DIR/README.md, the model card (classes, input, weights and their "
        "licences, training data, validation and test scores). `co2s predict` and `co2s evaluate` "
        "accept DIR in place of a checkpoint; co2s.Segmenter.load(DIR) in Python. With --onnx, also "
        "DIR/model.onnx for QGIS Deepness, GeoDeep or any ONNX runtime: band values / 255 "
        "[N, C, tile, tile] in, class probabilities out, with the metadata those plugins read "
        "(see docs/prediction.md).")
    p.add_argument("--checkpoint", help="a .ckpt written by co2s train (or a model folder)")
    p.add_argument("checkpoint_positional", nargs="?", metavar="CHECKPOINT",
                   help="the same, as a positional argument (older form)")
    p.add_argument("--out", required=True, help="output folder")
    _add_prediction_arg(p, "prediction mode: a model's name, or for two students mean or confidence")
    p.add_argument("--onnx", action="store_true", help="also export model.onnx (needs the onnx extra)")
    p.add_argument("--tile", type=int, help="ONNX tile size (default: the evaluation window)")
    p.add_argument("--scale", type=float, help="ONNX: what the graph divides the stored values by, for a model "
                   "of scale auto (255 for uint8 images, 65535 for uint16, 1 for float; default: its training "
                   "images', when they had one type)")
    p.add_argument("--logits", action="store_true", help="ONNX: also output each student's logits (to "
                   "reproduce co2s predict's blending exactly; QGIS Deepness shows every output as a layer)")
    p.add_argument("--gsd", type=float, metavar="METRES", help="the ground sample distance to record (metres "
                   "per pixel), for imagery whose files do not say it; ONNX writes it as resolution")
    p.set_defaults(func=cmd_export)

    p = command("demo", help="generate synthetic aerial data, train, evaluate and predict",
                description="Generate synthetic aerial data, train, evaluate and predict, all in one "
                "output folder. Rerun into the same folder, the demo replaces its own earlier "
                "outputs there (metrics, predictions, comparison.png, summary.json) and says so.")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic data and of training (default: 0)")
    p.add_argument("--setting", default="uniform",
                   help="where the tiles lie in the survey area: uniform (every split drawn alike) or survey "
                   "(labelled tiles from one quarter of the area, the rest under other conditions; "
                   "docs/benchmarks.md) (default: uniform)")
    p.add_argument("--labelled", type=int, default=16, metavar="N", help="labelled tiles (default: 16)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the demo config, e.g. --set train.iters=100")
    p.add_argument("--no-progress", action="store_true", help="no progress bars: plain lines")
    p.set_defaults(func=cmd_demo)

    p = command("model-summary", help="weight family, architecture, normalisation, parameters and "
                "shapes of each student")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--random-weights", action="store_true",
                   help="build the architectures with random weights (no weight files needed)")
    p.add_argument("--input-size", type=int, help="square input size (default: train.crop_size)")
    p.set_defaults(func=cmd_model_summary)

    p = command("embed-text", help="class prototypes from a CLIP text encoder, saved for reuse")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--clip", help="CLIP weights (default: the config's first CLIP student: text.model, "
                   "else backbone.weights)")
    p.add_argument("--tokenizer", help="folder with vocab.json + merges.txt, OpenAI's bpe_simple_vocab_16e6.txt.gz "
                   "(or its folder), or a Hub id (default: the student's text.tokenizer, else the CLIP source)")
    p.add_argument("--template", help="prompt template (default: the student's text.template, 'a photo of a {}')")
    p.set_defaults(func=cmd_embed_text)

    p = command(
        "presets", help="list the packaged presets, or print one (or a YAML file) fully resolved",
        description="Without NAME: list the packaged presets. With a preset name or a YAML file: "
        "print the config fully resolved (bases merged, every default filled in), which validates "
        "it without training.")
    p.add_argument("name", nargs="?", help="preset name or YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value before printing (repeatable)")
    p.add_argument("--diff", action="store_true",
                   help="print only what the config (and --set) changes in the model of its base preset")
    p.set_defaults(func=cmd_presets)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line: a user reads the message, not a source line."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from co2s.progress import set_progress

    set_progress(not getattr(args, "no_progress", False))
    try:
        with each_warning_once(_one_line_warning), _stop_on_sigterm():
            code = args.func(args)
        _flush_stdout()  # what was printed is written now, as part of the command
        return code
    except (Exception, KeyboardInterrupt) as exc:
        message, code, bug = error_message(exc)
        if bug or debug_requested(args):
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        try:
            _flush_stdout()
        except OSError:  # said already, in the one line above
            pass
        return code


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM (a scheduler's pre-emption, ``kill``) stops a command as Ctrl-C does, raising
    :class:`~co2s.errors.Terminated`: files being written are removed whole and the exit says so
    (143), where Python's default would die at once and leave temporaries. Training catches it
    itself to save its current step first (:class:`co2s.engine.trainer.Trainer`)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread has signals
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _flush_stdout() -> None:
    """Flush standard output; when that fails (``co2s presets demo > /dev/full``: a full disk),
    name it in the error and send the rest nowhere, so Python does not fail again at exit with
    "Exception ignored" and exit code 120."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no file descriptor (captured output)
            pass
        if exc.filename is None:
            exc.filename = "standard output"
        raise


if __name__ == "__main__":
    sys.exit(main())
