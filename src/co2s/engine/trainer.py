"""The training engine: Lightning Fabric for devices, DDP and precision; an iteration loop that
validates, checkpoints atomically and resumes exactly where ``latest`` left off."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader
from tqdm import tqdm

from co2s.config.loader import config_to_dict, validate
from co2s.data.module import data_module
from co2s.data.sampler import ResumableSampler
from co2s.engine.checkpoint import InPlaceCheckpointIO, clean_checkpoint_temporaries, save_checkpoint
from co2s.models.contract import contract_for
from co2s.models.loading import load_trained_models, read_checkpoint
from co2s.models.transfer import transfer_weights
from co2s.models.student_factory import fetch_pretrained
from co2s.models.weight_checks import check_fit, expected_tensors, tensor_infos
from co2s.engine.metrics_log import MetricsLog, take_validation, untaught_class_notes
from co2s.engine.optim import poly_factor, set_lr
from co2s.config.compare import config_differences
from co2s.config.schema import best_on_validation, resolve_prediction
from co2s.engine.run_dir import (Run, check_run_dir, extended_config, last_run_info, prepare_run_dir,
                                 write_run_info)
from co2s.engine.run_lock import RunLock
from co2s.run_folder import RunFolder
from co2s.errors import CheckpointError, RunLockedError, Terminated, TrainingError
from co2s.evaluation.evaluator import score_predictions
from co2s.inference.segmenter import Segmenter
from co2s.methods import Schedule, build_method
from co2s.methods.unimatch import CONFIDENT_BY_CLASS
from co2s.progress import bars_shown, progress_bar


def training_precision(engine) -> str:
    """``engine.precision``, with ``auto`` decided: bf16-mixed where the run will use a CUDA device
    that supports bf16 (Ampere or newer), else full precision."""
    if engine.precision != "auto":
        return engine.precision
    cuda = engine.accelerator in ("cuda", "gpu") or (engine.accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def make_fabric(config) -> Fabric:
    e = config.engine
    return Fabric(
        accelerator=e.accelerator, devices=e.devices, num_nodes=e.num_nodes,
        strategy=e.strategy, precision=training_precision(e),
        plugins=[InPlaceCheckpointIO()],  # checkpoints written in the run folder only, not in $TMPDIR
    )


def total_steps(config, num_samples: int, world_size: int, batch_size: int | None = None) -> int:
    """``train.iters`` if set, else epochs x steps per pass over the training set (the unlabelled
    set for semi-supervised methods; the labelled set is repeated to match)."""
    t = config.train
    if t.iters is not None:
        return t.iters
    per_step = (batch_size or t.batch_size) * world_size * t.grad_accum
    return t.epochs * math.ceil(num_samples / per_step)


def lr_scale(config, world_size: int) -> float:
    """Linear scaling rule: lr x (global labelled batch / ``train.lr_reference_batch``).

    The paper's learning rates were tuned for a global batch of 8 (WHDLD: 2 per GPU x 4) or 4
    (the others: 1 x 4); set ``lr_reference_batch`` to that to keep them right on other hardware.
    """
    t = config.train
    if t.lr_reference_batch is None:
        return 1.0
    return t.batch_size * world_size * t.grad_accum / t.lr_reference_batch


def _rng_state(fabric) -> dict:
    # Every rank's torch RNG (dropout masks differ per rank), gathered so rank 0 can save them.
    local = torch.get_rng_state()
    if fabric.world_size > 1:
        with warnings.catch_warnings():  # Fabric's all_gather warns about a torch deprecation
            warnings.simplefilter("ignore")
            states = fabric.all_gather(local.to(fabric.device))
    else:
        states = local[None]
    state = {"torch": states.cpu(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(fabric, state: dict) -> None:
    torch_states = state["torch"]
    if torch_states.shape[0] == fabric.world_size:
        torch.set_rng_state(torch_states[fabric.global_rank].to(torch.uint8))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_batches(labelled: Iterable[dict], unlabelled: Iterable[dict] | None) -> Iterator[dict]:
    """One dict per micro-batch: labelled crops, merged with unlabelled pairs when given."""
    if unlabelled is None:
        return iter(labelled)
    return ({**x, **u} for x, u in zip(labelled, unlabelled))


class LogWindow:
    """The logged scalars of the steps since the last train record, and their throughput. Each
    value is averaged over the steps that logged it: some are measured on some steps only (the
    burn-in's diagnostics, :meth:`Schedule.measures_unlabelled`)."""

    def __init__(self) -> None:
        self.start, self.images = time.perf_counter(), 0
        self._sums: dict[str, float] = {}
        self._steps: dict[str, int] = {}

    def add_step(self, values: dict[str, float], images: int) -> None:
        """One optimiser step's values (already averaged over its micro-batches)."""
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._steps[key] = self._steps.get(key, 0) + 1
        self.images += images

    def means(self) -> dict[str, float]:
        return {k: v / self._steps[k] for k, v in self._sums.items()}

    def images_per_sec(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)


def train_step(fabric, method, batches: Iterator[dict], step: int, schedule: Schedule, window: LogWindow) -> None:
    """One optimiser step exactly as ``fit`` runs it, so benchmarks can time the real thing: poly
    learning rate, forward and backward of ``train.grad_accum`` micro-batches (DDP all-reduces
    gradients on the last only), then every optimiser steps, its model's gradient clipped to
    ``train.grad_clip`` first when set. Adds the step's logged scalars (each the mean over its
    micro-batches) and the labelled images it consumed across ranks to ``window``."""
    t = method.config.train
    for opt in method.optimizers.values():
        set_lr(opt, poly_factor(step, schedule.total, t.poly_power, t.warmup_iters))
    images, values = 0, {}
    for micro in range(t.grad_accum):
        batch = next(batches)
        last = micro == t.grad_accum - 1
        with _no_sync(fabric, method.modules.values(), enabled=not last):
            losses, logs = method.training_loss(batch, step, schedule)
            _check_finite_loss(fabric, losses, logs, batch, step)
            method.backward(losses, 1 / t.grad_accum)
        for key, value in logs.items():
            values[key] = values.get(key, 0.0) + float(value) / t.grad_accum
        images += batch["image"].shape[0] * fabric.world_size
    for name, opt in method.optimizers.items():
        if t.grad_clip is not None:  # Fabric unscales fp16 gradients first; the norm is over all ranks' sum
            norm = fabric.clip_gradients(method.modules[name], opt, max_norm=t.grad_clip)
            values["grad_norm" if len(method.optimizers) == 1 else f"{name}/grad_norm"] = float(norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    window.add_step(values, images)


class Trainer:
    def __init__(self, config, run_dir: str | os.PathLike | None = None, progress: bool = True,
                 extend: int | None = None):
        """``extend``: continue the run in ``run_dir`` to a total of that many steps
        (:func:`~co2s.engine.run_dir.extended_config`)."""
        self.run_dir = Path(run_dir or config.run_dir)
        self.extending = extend is not None
        self.config = extended_config(config, self.run_dir, extend) if self.extending else config
        self.progress = progress

    # -- data -----------------------------------------------------------------------------
    def data(self, report: bool = True):
        """The run's data module, read and checked (:mod:`co2s.data.module`)."""
        config = self.config
        module = data_module(config.data, config.in_channels, self.progress, report)
        return module.setup_training(config.train, config.uses_unlabelled)

    def _loader(self, dataset, fabric, start: int, batch_size: int, seed: int) -> DataLoader:
        t = self.config.train
        sampler = ResumableSampler(len(dataset), seed, fabric.global_rank, fabric.world_size, start)
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=t.num_workers,
            pin_memory=fabric.device.type == "cuda", persistent_workers=t.num_workers > 0,
            # Own generator: creating the iterator must not consume the global RNG, or a resumed
            # run's dropout masks would differ from an uninterrupted run's.
            generator=torch.Generator().manual_seed(seed),
            worker_init_fn=_worker_leaves_stopping_to_the_run,
        )
        return fabric.setup_dataloaders(loader, use_distributed_sampler=False)

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> Run:
        fabric = make_fabric(self.config)
        owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        fabric.launch()
        lock = _lock_run_dir(fabric, self.run_dir)
        finished = False
        try:
            run = self._fit(fabric)
            finished = True
            return run
        finally:
            if lock is not None:
                lock.release()
            if owns_group and finished:
                _close_process_group(fabric)

    def _fit(self, fabric) -> Run:
        config, t = self.config, self.config.train
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        check_run_dir(config, self.run_dir, self.extending)  # the checks that take seconds come before the data's
        if t.init_from and not Path(t.init_from).exists():
            raise CheckpointError(f"train.init_from: {t.init_from} does not exist")
        fetch_pretrained(config.model)
        data = self.data(report=fabric.is_global_zero)
        labelled, unlabelled, val = data.labelled, data.unlabelled, data.val
        self._gsd = data.ground_sample_distance()  # both recorded in the inference contract
        self._auto_scale = data.auto_scale()

        if fabric.is_global_zero:
            prepare_run_dir(config, self.run_dir, self.extending)
        fabric.barrier()
        fabric.seed_everything(t.seed, verbose=False)  # same initial weights on every rank
        method = build_method(config, lr_scale=lr_scale(config, fabric.world_size))
        method.setup(fabric)
        torch.manual_seed(t.seed + 7919 * fabric.global_rank)  # per-rank dropout streams

        ub = t.semi.unlabelled_batch_size or t.batch_size
        uses_unlabelled = method.uses_unlabelled
        total = (total_steps(config, len(unlabelled), fabric.world_size, ub) if uses_unlabelled
                 else total_steps(config, len(labelled), fabric.world_size))
        schedule = Schedule.for_run(config, total)
        state = {"step": 0, "best": None, "best_per_prediction": {}, **method.modules,
                 **{f"opt_{k}": v for k, v in method.optimizers.items()}}
        self._model_names = list(method.modules)
        folder = RunFolder(self.run_dir)
        log = MetricsLog(folder.metrics_log, enabled=fabric.is_global_zero)
        latest = folder.latest
        if latest.is_file():
            self._resume(fabric, latest, method, state)
            if fabric.is_global_zero:
                print(f"resuming {self.run_dir} from step {state['step']}" + (
                    f" towards the new total of {total} steps (burn-in stays at step {schedule.burn_in})"
                    if self.extending else ""))
        elif t.init_from:
            said = _init_from(t.init_from, method.modules, config.data.classes)
            if fabric.is_global_zero:
                print(said)
        # Drop what an earlier attempt logged after its last checkpoint (all of it when there is
        # none): those steps run again and log again.
        log.truncate_after(state["step"])
        # `latest` of a validation step is written before that validation: the best so far is
        # what the log's validation records say, and a validation without its record (stopped
        # or killed during it) runs again before training goes on.
        validated = _best_from_log(log.records(), state)
        if fabric.world_size > 1:  # rank 0 read the log: every rank takes its reading
            validated, state["best"], state["best_per_prediction"] = fabric.broadcast(
                (validated, state["best"], state["best_per_prediction"]))
        if fabric.is_global_zero:
            clean_checkpoint_temporaries(folder, state["step"], schedule.burn_in)
            precision = training_precision(config.engine)
            before = last_run_info(self.run_dir).get("precision") if state["step"] else None
            if before and before != precision:  # e.g. auto: bf16 on the GPU that started it, fp32 here
                how = " (engine.precision auto, on this machine)" if config.engine.precision == "auto" else ""
                warnings.warn(f"{self.run_dir} trained in {before} precision until step {state['step']} and goes "
                              f"on in {precision}{how}; set engine.precision={before} to keep it", stacklevel=2)
            write_run_info(self.run_dir, {"resumed_from_step": state["step"], "total_steps": total,
                                          "burn_in_steps": schedule.burn_in, "precision": precision,
                                          "world_size": fabric.world_size, "parallel_models": method.parallel})

        dataset, pairs = data.train_datasets(t)
        start = state["step"] * t.grad_accum
        batches = training_batches(
            self._loader(dataset, fabric, start * t.batch_size, t.batch_size, t.seed),
            self._loader(pairs, fabric, start * ub, ub, t.seed + 1) if pairs is not None else None)
        val_set = val

        shown = self.progress and fabric.is_global_zero
        bar = progress_bar(total=total, initial=state["step"], desc="training", leave=True, enabled=shown)
        plain_lines = fabric.is_global_zero and not bars_shown(shown)  # a log file, or --no-progress
        window = LogWindow()
        for m in method.modules.values():
            m.train()
        interrupts = _Interrupts(enabled=fabric.world_size == 1)
        with interrupts, method.running():
            if val_set is not None and state["step"] > 0 and not validated and (
                    state["step"] % t.val_every == 0 or state["step"] == total):
                interrupts.saved = True  # `latest` holds this step: Ctrl-C may stop at once
                self._validate(fabric, method, val_set, state, log)
            while state["step"] < total:
                step = state["step"]
                interrupts.saved = False
                train_step(fabric, method, batches, step, schedule, window)
                state["step"] = step + 1
                bar.update(1)

                done = state["step"]
                if schedule.closes_log_window(step):
                    record = {"step": done, "kind": "train", **window.means(),
                              **_learning_rates(method.optimizers), "images_per_sec": window.images_per_sec()}
                    log.write(record)
                    bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
                    if plain_lines:
                        print(_plain_line(record, total), flush=True)
                    window = LogWindow()
                if done == schedule.burn_in and done < total:
                    # The end of the supervised burn-in: the students trained on labels only, as a
                    # supervised run of the same length would have them at this step (the demo
                    # continues its supervised baseline from here). Committed before this step's
                    # `latest`: a kill between the two leaves it, and the restart (from an earlier
                    # `latest`) redoes this step; the other order lost it for good.
                    save_checkpoint(fabric, folder.burn_in, self._checkpoint_state(fabric, state))
                validates = val_set is not None and (done % t.val_every == 0 or done == total)
                if done % t.ckpt_every == 0 or done == total or validates or interrupts.requested:
                    # Before this step's validation: stopping or dying during a long validation
                    # loses none of the training (the restart validates this step again).
                    save_checkpoint(fabric, latest, self._checkpoint_state(fabric, state))
                    interrupts.saved = True
                interrupts.stop_if_requested(done, latest)
                # Test hook (tests/engine/test_trainer.py): a crash by SIGKILL once this step's checkpoint is written.
                if os.environ.get("CO2S_TEST_KILL_AFTER_STEP") == str(done):
                    os.kill(os.getpid(), signal.SIGKILL)
                if validates:
                    self._validate(fabric, method, val_set, state, log)
                if schedule.closes_log_window(step):  # checkpoint and validation time is not throughput
                    window.start = time.perf_counter()
        bar.close()
        if state["step"] == total:
            log.write({"step": total, "kind": "final", **_weights_in_sync(fabric, method.modules)})
        log.close()
        notes = (tuple(untaught_class_notes(log.records(), schedule.burn_in, list(self.config.data.classes)))
                 if fabric.is_global_zero else ())
        return Run(self.run_dir, state["step"], state["best"], fabric.is_global_zero, schedule.burn_in, notes)

    def _prediction(self, state: dict) -> str:
        """What a checkpoint of ``state`` predicts: ``eval.prediction``, with ``auto`` the choice
        of the best validation so far."""
        return resolve_prediction(self.config.eval.prediction, self._model_names,
                                  (state["best"] or {}).get("prediction"))

    def _checkpoint_state(self, fabric, state: dict) -> dict:
        contract = contract_for({name: state[name] for name in self._model_names}, self.config, gsd=self._gsd,
                                auto_scale=self._auto_scale, prediction=self._prediction(state))
        return {**state, "config": config_to_dict(self.config), "rng": _rng_state(fabric),
                "contract": contract.to_record()}

    def _resume(self, fabric, path: Path, method, state: dict) -> None:
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as exc:
            raise CheckpointError(f"cannot resume: {exc}. Delete {path} to restart the run from "
                                  "step 0 (or copy an intact checkpoint there)") from None
        saved = validate(ckpt["config"], f"config stored in {path}", stored=True)
        changes = config_differences(config_to_dict(saved)["model"], config_to_dict(self.config)["model"],
                                     "model.")
        if changes or saved.data.classes != self.config.data.classes:
            shown = "; ".join(changes[:5]) or f"classes {saved.data.classes} -> {self.config.data.classes}"
            raise CheckpointError(f"{path} holds a different model or class list ({shown}); cannot resume")
        where = f"cannot resume from {path}"
        stored = {name: tensor_infos(ckpt[name], where, name) for name in method.modules
                  if isinstance(ckpt.get(name), dict)}
        check_fit(expected_tensors({n: getattr(m, "module", m) for n, m in method.modules.items()}), stored,
                  where, {}, "the run's config")
        for name, module in method.modules.items():
            module.load_state_dict(ckpt[name])
        for name, opt in method.optimizers.items():
            if not isinstance(ckpt.get(f"opt_{name}"), dict):
                raise CheckpointError(f"cannot resume from {path}: it holds no optimiser state of {name!r} "
                                      "(weights only: not written by co2s train)")
            try:
                opt.load_state_dict(ckpt[f"opt_{name}"])
            except (KeyError, ValueError) as exc:
                raise CheckpointError(f"cannot resume from {path}: the optimiser state of {name!r} does not "
                                      f"fit: {exc}") from None
        state["step"], state["best"] = int(ckpt["step"]), ckpt.get("best")
        state["best_per_prediction"] = ckpt.get("best_per_prediction", {})
        _set_rng_state(fabric, ckpt["rng"])

    def _validate(self, fabric, method, val_set, state: dict, log: MetricsLog) -> None:
        start = time.perf_counter()
        for m in method.modules.values():
            m.eval()
        # The Segmenter of the models being trained: validation scores what predict would write.
        # Fabric's module wrappers apply the run's precision in their forward.
        segmenter = Segmenter.from_config(method.modules, self.config)
        with method.all_threads():  # the students run one after the other here
            results = score_predictions(segmenter, val_set, rank=fabric.global_rank, world_size=fabric.world_size,
                                        progress=self.progress and fabric.is_global_zero)
        for m in method.modules.values():
            m.train()
        # eval.prediction auto: the prediction this validation scores highest selects the model
        main = resolve_prediction(self.config.eval.prediction, list(method.modules),
                                  validated=best_on_validation({k: r["mIoU"] for k, r in results.items()}))
        score = results[main]["mIoU"]
        record = {"step": state["step"], "kind": "val", "split": "val", "selected_by": main,
                  **{f"mIoU/{k}": r["mIoU"] for k, r in results.items()}, "mIoU": score,
                  "IoU": results[main]["IoU"],  # per class, of the selecting prediction (the model card's)
                  "images": len(val_set), "seconds": round(time.perf_counter() - start, 2)}  # what validation costs
        before = self._prediction(state)
        improved = _take_val_record(state, record)
        if improved:  # committed before the record: a logged validation never lacks its best.ckpt
            save_checkpoint(fabric, RunFolder(self.run_dir).best, self._checkpoint_state(fabric, state))
            if self._prediction(state) != before:
                # eval.prediction auto chose anew: `latest`, written before this validation, says so too
                save_checkpoint(fabric, RunFolder(self.run_dir).latest, self._checkpoint_state(fabric, state))
        log.write(record)
        if fabric.is_global_zero:
            others = ", ".join(f"{k} {r['mIoU']:.2f}" for k, r in results.items() if k != main)
            tqdm.write(f"step {state['step']}: val mIoU {score:.2f} ({main}"
                       f"{'; ' + others if others else ''}; best {state['best']['mIoU']:.2f}"
                       f" at step {state['best']['step']})")


def _init_from(source: str, modules: dict, classes: list[str]) -> str:
    """Start the run's models from the trained weights of ``source`` (``train.init_from``: a
    checkpoint or model folder, read with every check of a model load); the line that says what
    was kept, matched by class or rebuilt (co2s.models.transfer)."""
    trained = load_trained_models(source)
    names, theirs = list(modules), list(trained.models)
    if names != theirs:
        raise CheckpointError(f"train.init_from {source}: it holds the models {theirs}, this run trains {names}")
    old = trained.contract.classes
    parts = []
    for name, module in modules.items():
        done = transfer_weights(getattr(module, "module", module), trained.models[name].state_dict(), classes,
                                old, f"train.init_from {source} ({name})")
        extra = [f"{len(done.class_rows)} class-row tensors"] if done.class_rows else []
        extra += [f"{', '.join(done.rebuilt)} as built from this run's config"] if done.rebuilt else []
        parts.append(f"{name}: {done.kept} tensors kept" + "".join(f", {e}" for e in extra))
    shared = [c for c in classes if c in old]
    new = [c for c in classes if c not in old]
    dropped = [c for c in old if c not in classes]
    rows = (f"class rows of {len(shared)} shared classes kept" + (f", new {new} initialised fresh" if new else "")
            + (f", {dropped} dropped" if dropped else ""))
    return f"init_from {source}: " + "; ".join(parts) + f"; {rows}"


def _check_finite_loss(fabric, losses: dict[str, torch.Tensor], logs: dict, batch: dict, step: int) -> None:
    """Stop before a non-finite loss reaches the weights, naming the step, the terms and the files.

    Every rank takes part in the check (one all-reduce), so all stop together instead of hanging in
    the gradient all-reduce of the rank that failed.
    """
    loss = sum(v.detach() for v in losses.values())
    finite = not bool((~torch.isfinite(loss)).any())
    if fabric.world_size > 1:
        flag = torch.tensor(0.0 if finite else 1.0, device=fabric.device)
        finite = float(fabric.all_reduce(flag, reduce_op="sum")) == 0.0
    if finite:
        return
    terms = [k for k, v in logs.items() if not math.isfinite(float(v))]
    files = [str(f) for key in ("path", "u_path", "mix_path") for f in (batch.get(key) or [])]
    shown = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    raise TrainingError(
        f"step {step + 1}: the training loss is not finite ({float(loss):g}"
        f"{'; non-finite terms: ' + ', '.join(terms) if terms else ''}); "
        f"batch files: {shown or 'not recorded'}. Nothing was written for this step; "
        "check those images for extreme values (data.scale, data.mean/std) or lower train.lr, then "
        "rerun to resume from latest.ckpt")


def _take_val_record(state: dict, record: dict) -> bool:
    """Fold one validation record into ``state``'s best and best per prediction
    (:func:`~co2s.engine.metrics_log.take_validation`); True when it is the new best."""
    state["best"], improved = take_validation(state["best"], state["best_per_prediction"], record)
    return improved


def _best_from_log(records: list[dict], state: dict) -> bool:
    """Rebuild ``state``'s best from the validation records up to its step (the checkpoint may
    predate the last of them); True when the checkpoint's own step has its record. Logs without
    validation records (no val split) leave the checkpoint's values."""
    vals = [r for r in records if r.get("kind") == "val" and r.get("step", 0) <= state["step"]]
    if not vals:
        return False
    state["best"], state["best_per_prediction"] = None, {}
    for record in vals:
        _take_val_record(state, record)
    return vals[-1]["step"] == state["step"]


def _worker_leaves_stopping_to_the_run(worker_id: int) -> None:
    """A data-loading worker ignores Ctrl-C and SIGTERM: a terminal or a scheduler signals every
    process of the job, and the main process finishes its step before it stops
    (:class:`_Interrupts`). A worker that ended on the signal (torch's default for Ctrl-C) left
    that step without its batch: the run died with "worker exited unexpectedly" or, for a batch
    already queued, "no such file" for the dead worker's shared memory, instead of saving. The
    workers still end with the run: the main process shuts them down, and torch's watchdog ends
    them if it dies."""
    for signum in _Interrupts.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class _Interrupts:
    """Ctrl-C or SIGTERM (a scheduler's pre-emption) during training: the first stops at the end
    of the current step, after saving it to ``latest`` (at once when ``latest`` already holds the
    step, e.g. during a validation); a second stops at once. Single-process runs only: under DDP
    every rank gets its own signal, and a rank that stopped alone would leave the others waiting
    in a collective."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self.saved = False  # whether `latest` holds the last completed step
        self._stop: type[KeyboardInterrupt] = KeyboardInterrupt  # what stopping raises
        self._previous: dict = {}

    def __enter__(self) -> _Interrupts:
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        stop = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if self.requested or self.saved:
            raise stop
        self.requested, self._stop = True, stop
        said = "terminated (SIGTERM)" if stop is Terminated else "interrupted"
        tqdm.write(f"{said}: finishing this step and saving it (Ctrl-C again to stop at once)")

    def stop_if_requested(self, step: int, latest: Path) -> None:
        if self.requested:
            tqdm.write(f"saved step {step} to {latest}")
            raise self._stop


def _plain_line(record: dict, total: int) -> str:
    """A train record as one line, for logs where a progress bar cannot redraw: the per-group
    learning rates and per-class confident ratios stay in metrics.jsonl (a line per class is too
    long to read; the end of training notes a class that matters)."""
    shown = {k: v for k, v in record.items()
             if k not in ("step", "kind") and not k.startswith("lr/") and CONFIDENT_BY_CLASS not in k}
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()]
    return f"step {record['step']}/{total}: " + ", ".join(parts)


def _lock_run_dir(fabric, run_dir: Path) -> RunLock | None:
    """Rank 0 locks the run folder (:mod:`co2s.engine.run_lock`) before anything there is written;
    a refusal is broadcast so that every rank stops, not only rank 0 (the others would wait for it
    at the next barrier until the collective timeout)."""
    lock, refused = None, None
    if fabric.is_global_zero:
        try:
            lock = RunLock(run_dir).acquire()
        except RunLockedError as exc:
            refused = str(exc)
    if fabric.world_size > 1:
        refused = fabric.broadcast(refused)
    if refused:
        raise RunLockedError(refused)
    return lock


def _close_process_group(fabric) -> None:
    """Destroy the process group Fabric made once every rank is done with it. Left to interpreter
    exit, gloo's worker threads could still hold work (and tensors) while Python tore down, which
    aborted about 1 run in 17 after a good run with ``terminate called without an active
    exception`` (pytorch/pytorch#190489). Only after a finished run: a failing rank must not wait
    at a barrier that the others never reach."""
    if fabric.world_size > 1 and torch.distributed.is_initialized():
        fabric.barrier()
        torch.distributed.destroy_process_group()


def _weights_in_sync(fabric, modules: dict) -> dict:
    """Whether every rank ends with the same weights (DDP must keep them identical)."""
    sums = {}
    for name, module in modules.items():
        params = [p.detach().double() for p in module.parameters()]
        local = torch.stack([sum(p.sum() for p in params), sum((p * p).sum() for p in params)])
        if fabric.world_size > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gathered = fabric.all_gather(local.to(fabric.device)).cpu()
        else:
            gathered = local[None].cpu()
        sums[name] = gathered.tolist()
    in_sync = all(all(row == rows[0] for row in rows) for rows in sums.values())
    if not in_sync and fabric.is_global_zero:
        warnings.warn(f"weights differ across ranks at the end of training: {sums}")
    return {"ranks": fabric.world_size, "ranks_in_sync": in_sync, "weight_checksums": sums}


def _learning_rates(optimizers: dict) -> dict[str, float]:
    """Current lr of every decayed parameter group (``lr`` alone for a single plain model)."""
    out = {}
    for opt_name, opt in optimizers.items():
        for group in opt.param_groups:
            name = group.get("name", "")
            if not name.endswith("/no_decay"):
                out[f"lr/{opt_name}/{name}".rstrip("/")] = group["lr"]
    if len(out) == 1:
        return {"lr": next(iter(out.values()))}
    return out


def _no_sync(fabric, modules, enabled: bool) -> contextlib.ExitStack:
    """Skip DDP's gradient all-reduce on accumulation micro-batches before the last."""
    stack = contextlib.ExitStack()
    for module in modules:
        stack.enter_context(fabric.no_backward_sync(module, enabled=enabled))
    return stack
