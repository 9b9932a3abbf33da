"""What FUSE and random search share: task data access, batching from a seeded generator, evaluation, fingerprints,
final training of a winner, and the checkpoint/log files of a resumable search."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import FormatError, atomic_write_text, load_tree, save_tree
from ..models.training import default_device, train_from_scratch


def resolve_data(task: Any, data_dir=None):
    """A task's data: a :class:`fisherx.tasks.TaskData` as is, or ``task.load(data_dir)`` for a task."""
    if hasattr(task, "train") and hasattr(task, "val"):
        return task
    if hasattr(task, "load"):
        return task.load(data_dir=data_dir)
    raise TypeError(f"expected a fisherx Task or TaskData (with .train/.val/.test), got {type(task).__name__}")


def split(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    pair = getattr(data, name, None)
    if pair is None:
        raise ValueError(f"the task data has no {name} split")
    x, y = pair
    if len(x) != len(y):
        raise ValueError(f"the {name} split has {len(x)} inputs but {len(y)} labels")
    if len(x) < 2:
        raise ValueError(f"the {name} split has {len(x)} samples; at least 2 are needed (BatchNorm)")
    return x, y


def shape_of(data: Any) -> tuple[int, int]:
    """(in_channels, num_classes) of the task data."""
    x, y = split(data, "train")
    in_channels = int(getattr(data, "in_channels", None) or x.shape[1])
    num_classes = int(getattr(data, "num_classes", None) or int(y.max()) + 1)
    return in_channels, num_classes


def data_fingerprint(data: Any) -> str:
    """SHA-256 (first 16 hex) of the train, val and test tensors: a resumed search must see the same data."""
    if hasattr(data, "fingerprint"):
        return data.fingerprint()[:16]
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        pair = getattr(data, name, None)
        if pair is None:
            continue
        for t in pair:
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches from ``gen``. A trailing batch of one sample is dropped: BatchNorm in
    training mode cannot normalise a single sample of 1×1 maps, and one sample changes nothing in expectation."""
    perm = torch.randperm(n, generator=gen)
    out = list(perm.split(batch_size))
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    return out


@torch.no_grad()
def logits_of(net: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Eval-mode logits of ``x`` in batches (on ``device``)."""
    was = net.training
    net.eval()
    out = torch.cat([net(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])
    net.train(was)
    return out


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.to(logits.device)).float().mean())


def check_positive_ints(**values: Any) -> None:
    """Refuse any search setting that is not a positive integer, naming it."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def search_inputs(task: Any, data_dir, device):
    """What every search starts from: ``(data, device, (x_train, y_train), (x_val, y_val), (in_channels,
    num_classes))``."""
    data = resolve_data(task, data_dir)
    return data, pick_device(device), split(data, "train"), split(data, "val"), shape_of(data)


def pick_device(device) -> torch.device:

    return default_device(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def show_progress(progress: bool | None) -> bool:
    # None (the default) reports like True: a bar on a terminal, plain lines in a log (fisherx._progress).
    return progress is not False


def final_training(
    space, genotype, data, *, epochs: int, device: torch.device, checkpoint=None, **recipe
) -> tuple[dict, nn.Module]:
    """Train the winner from scratch on the training split (the papers retrain the found cell) with
    :func:`fisherx.models.train` (Adam, best-validation-epoch weights kept), then record its test accuracy once.
    ``recipe``: the training's ``batch_size``, ``lr`` and ``seed``. Returns (report, trained network); the report
    has test and validation accuracy, parameters and time. ``checkpoint``: a file for
    :func:`fisherx.models.train`'s per-epoch checkpoints (resume after a kill)."""

    in_channels, num_classes = shape_of(data)
    res = train_from_scratch(
        lambda: space.build(genotype, in_channels, num_classes),
        data,
        epochs=epochs,
        device=device,
        checkpoint=checkpoint,
        **recipe,
    )
    return {
        "test_accuracy": float(res.test_accuracy),
        "val_accuracy": res.val_accuracy,
        "params": space.num_params(genotype, in_channels, num_classes),
        "train_s": res.seconds,
        "epochs": epochs,
    }, res.model


class SearchFiles:
    """The on-disk state of a resumable search in ``out_dir``: a checkpoint written (atomically, with
    :func:`fisherx.io.save_tree`) after every round and every few weight steps, a JSON-lines log rewritten from the
    checkpoint's history (so the log never holds a round the checkpoint does not), and the final result as JSON.

    ``config`` fixes everything that changes the result; resuming with a different one is refused, naming the
    difference, instead of silently mixing two searches."""

    def __init__(self, out_dir, kind: str, config: dict):
        self.dir = Path(out_dir) if out_dir is not None else None
        self.kind = kind
        self.config = json.loads(json.dumps(config, sort_keys=True))
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.checkpoint = self.dir / f"{kind}_checkpoint.fx"
            self.log = self.dir / f"{kind}_log.jsonl"
            self.result = self.dir / f"{kind}_result.json"

    def _check_config(self, found: dict, path: Path) -> None:
        if found != self.config:
            diff = sorted(k for k in set(found) | set(self.config) if found.get(k) != self.config.get(k))
            detail = "; ".join(f"{k}: saved {found.get(k)!r}, now {self.config.get(k)!r}" for k in diff[:6])
            raise ValueError(
                f"{path} belongs to a different {self.kind} search ({detail}); use another output "
                f"directory or delete it to start over"
            )

    def load_checkpoint(self) -> dict | None:
        if self.dir is None or not self.checkpoint.exists():
            return None
        state = load_tree(self.checkpoint)
        if not isinstance(state, dict) or state.get("kind") != self.kind or "config" not in state:
            raise FormatError(f"{self.checkpoint} is not a {self.kind} checkpoint")
        self._check_config(state["config"], self.checkpoint)
        return state

    def save_state(self, state: dict) -> None:
        """Write the checkpoint (atomically: a kill mid-write leaves the previous one)."""
        if self.dir is not None:
            save_tree(self.checkpoint, {**state, "kind": self.kind, "config": self.config}, meta={"kind": self.kind})

    def save_round(self, state: dict, history: list[dict]) -> None:
        """The checkpoint at a round's end, then the log of every finished round."""
        if self.dir is None:
            return
        self.save_state(state)
        atomic_write_text(self.log, "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))

    def load_result(self) -> dict | None:
        if self.dir is None or not self.result.exists():
            return None
        d = json.loads(self.result.read_text(encoding="utf-8"))
        self._check_config(d.get("config"), self.result)
        return d

    def save_result(self, d: dict) -> None:
        if self.dir is not None:
            atomic_write_text(self.result, json.dumps({**d, "config": self.config}, indent=1, sort_keys=True) + "\n")
