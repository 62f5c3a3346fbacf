"""Start a model from another run's trained weights (``train.init_from``), with a class list that
may differ.

Every tensor is taken from the source except two kinds, which the modules declare:

* ``class_rows``: tensors with one row per class (learnable queries, a per-class classifier). Their
  rows follow class *names*: a class of both lists gets the source's row, a new class keeps its
  fresh initialisation, a class only the source had is dropped. Equal counts of different names
  are therefore never mixed up.
* ``built_from_config``: tensors computed from the run's own config (frozen text prototypes from
  its class list, the input normalisation ``mean``/``std`` from its data and weights): kept as
  built, so a new run never silently takes another run's normalisation.

Anything else that differs (a missing or extra tensor, another shape) is another architecture or
band count, and is refused with the first names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from co2s.errors import CheckpointError


@dataclass
class Transfer:
    """What :func:`transfer_weights` did to one model."""

    kept: int = 0  # tensors taken whole from the source
    class_rows: list[str] = field(default_factory=list)  # tensors whose rows were matched by class
    rebuilt: list[str] = field(default_factory=list)  # tensors kept as built from the run's config


def _declared(model: nn.Module, attribute: str) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        for name in getattr(type(module), attribute, ()):
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


def transfer_weights(model: nn.Module, source: dict[str, torch.Tensor], classes: list[str],
                     source_classes: list[str], label: str) -> Transfer:
    """Load ``source`` (a state dict trained for ``source_classes``) into ``model`` (built for
    ``classes``) as described in the module docstring; raises :class:`CheckpointError` naming
    ``label`` when the architectures differ."""
    target = model.state_dict()
    rows, rebuilt = _declared(model, "class_rows"), _declared(model, "built_from_config")
    missing = sorted(set(target) - set(source) - rebuilt)
    extra = sorted(set(source) - set(target) - rebuilt)
    if missing or extra:
        said = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
            f"not in this model {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}" if extra else "")
            if part)
        raise CheckpointError(f"{label}: another architecture than this run's ({said})")
    index = {name: i for i, name in enumerate(source_classes)}
    shared = [(i, index[c]) for i, c in enumerate(classes) if c in index]
    done, loaded = Transfer(), {}
    for name, tensor in target.items():
        if name in rebuilt:
            loaded[name] = tensor
            done.rebuilt.append(name)
            continue
        given = source[name]
        if name in rows:
            if given.shape[1:] != tensor.shape[1:] or given.shape[0] != len(source_classes):
                raise CheckpointError(f"{label}: {name} has shape {tuple(given.shape)}, this run's "
                                      f"{tuple(tensor.shape)} (another architecture)")
            merged = tensor.clone()
            for i, j in shared:
                merged[i] = given[j].to(tensor.dtype)
            loaded[name] = merged
            done.class_rows.append(name)
            continue
        if given.shape != tensor.shape:
            raise CheckpointError(f"{label}: {name} has shape {tuple(given.shape)}, this run's {tuple(tensor.shape)} "
                                  "(another architecture or band count)")
        loaded[name] = given.to(tensor.dtype)
        done.kept += 1
    model.load_state_dict(loaded)
    return done
