"""Training ε-approximation networks with the papers' recipe: Adam, batch 128, cross-entropy (docs/tasks.md).

The weights kept are those of the epoch with the best validation accuracy (the task's ``val`` split, held out of
its training data); the test split is touched once, at the end, to record the test accuracy that decides whether
the network is an ε-approximation (test accuracy ≥ 1 − ε).

Other per-sample losses (``loss="mse"``: ½‖f(x) − y‖², or a callable) train regression and pixel-to-pixel tasks;
there accuracy means nothing, so the best epoch is the one with the lowest validation loss and the result records
the test loss (mean per-sample loss) instead of an accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .._progress import Progress


class EpsilonWarning(UserWarning):
    """A network's test accuracy is below 1 − ε: it is not an ε-approximation of its task."""


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None):
    """Run a block with torch's global generators seeded with ``seed``, restoring their state afterwards, so that
    weight initialisation is reproducible without disturbing the caller's random stream."""
    devices = [torch.device(device).index or 0] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def default_device(device=None) -> torch.device:
    """``device`` as a torch.device; ``None`` means CUDA when it is available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


Loss = str | Callable


@dataclass
class TrainResult:
    """A trained network and how it did: the per-epoch history, the time taken, and its score on the test split.

    With ``loss="cross_entropy"`` the score is an accuracy in [0, 1] (``test_accuracy``, ``val_accuracy``); with any
    other loss those are None and ``test_loss`` / ``val_loss`` (mean per-sample loss, lower is better) hold it.
    ``test_loss`` is recorded for cross-entropy too only when asked for (it is None otherwise).
    """

    model: nn.Module
    test_accuracy: float | None
    val_accuracy: float | None
    best_epoch: int
    epochs: int
    seconds: float
    epsilon: float | None
    history: list = field(default_factory=list)
    loss: str = "cross_entropy"
    test_loss: float | None = None
    val_loss: float | None = None

    @property
    def classification(self) -> bool:
        """Whether the network was trained as a classifier (cross-entropy), so that accuracies mean something."""
        return self.loss == "cross_entropy"

    @property
    def meets_epsilon(self) -> bool:
        """Whether test accuracy ≥ 1 − ε (always True without an ε, or without an accuracy)."""
        return self.epsilon is None or self.test_accuracy is None or self.test_accuracy >= 1.0 - self.epsilon

    def summary(self) -> dict:
        """Everything but the model, as plain JSON-able data."""
        return {
            "test_accuracy": self.test_accuracy,
            "val_accuracy": self.val_accuracy,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "epsilon": self.epsilon,
            "meets_epsilon": self.meets_epsilon,
            "history": self.history,
            "loss": self.loss,
            "test_loss": self.test_loss,
            "val_loss": self.val_loss,
        }


def loss_name(loss: Loss) -> str:
    """A loss's name for results and checkpoints: the string itself, or a callable's ``__name__``."""
    return loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)


def _check_loss(loss: Loss) -> None:
    if not callable(loss) and loss not in ("cross_entropy", "mse"):
        raise ValueError(
            f"train: loss must be 'cross_entropy', 'mse' or a callable (out, y) -> per-sample losses, got {loss!r}"
        )


@torch.no_grad()
def per_sample_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = "mse", batch_size: int = 512
) -> torch.Tensor:
    """(N,) float64 per-sample losses ℓ_i of ``model`` (in eval mode) on ``(x, y)``: ½‖f(x_i) − y_i‖² for "mse",
    the label's cross-entropy for "cross_entropy", or ``loss(out, y)`` for a callable (one value per sample)."""
    from ..fisher.engine import per_sample_loss  # the Fisher's own definition of ℓ_i, so training and F agree

    _check_loss(loss)
    if x.shape[0] == 0:
        raise ValueError("per_sample_losses: no samples to evaluate on")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        parts.append(per_sample_loss(loss, model(xb), yb, xb.shape[0]).detach().double().cpu())
    model.train(was_training)
    return torch.cat(parts)


def evaluate_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = "mse", batch_size: int = 512
) -> float:
    """Mean per-sample loss (1/N) Σ_i ℓ_i of ``model`` on ``(x, y)`` (see :func:`per_sample_losses`)."""
    return float(per_sample_losses(model, x, y, loss, batch_size).mean())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, device=None) -> float:
    """Accuracy of ``model`` (in eval mode) on ``(x, y)``: the fraction of samples whose arg-max logit is ``y``."""
    if x.shape[0] == 0:
        raise ValueError("evaluate: no samples to evaluate on")
    device = default_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i : i + batch_size].to(device))
        correct += int((out.argmax(1).cpu() == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / x.shape[0]


def train(
    model: nn.Module,
    task_data,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int,
    device=None,
    progress: bool = True,
    epsilon: float | None = 0.1,
    trainable: Iterable[nn.Parameter] | None = None,
    checkpoint=None,
    loss: Loss = "cross_entropy",
) -> TrainResult:
    """Train ``model`` on ``task_data.train`` with Adam(lr) and cross-entropy for ``epochs`` epochs.

    ``loss``: "cross_entropy" (classification, scored by accuracy), "mse" (minimises the batch mean of
    ½‖f(x_i) − y_i‖², for targets shaped like the output), or a callable ``(out, y) -> (B,)`` per-sample losses
    (its batch mean is minimised). With a loss other than cross-entropy the best epoch is the one of lowest
    validation loss, ε is not checked, and the result holds ``test_loss`` instead of ``test_accuracy``.

    ``seed`` fixes the batch order (and any randomness inside the model). After every epoch the model is scored
    on ``task_data.val``; the best epoch's weights are kept. The test accuracy is then recorded, with an
    :class:`EpsilonWarning` when it is below ``1 − epsilon``. ``trainable``: train only these parameters, with
    the rest frozen and the whole model in eval mode (BatchNorm statistics frozen too): this is how a head is
    refitted on another task with its features fixed. The model is trained in place and returned in eval mode.

    ``checkpoint``: a file where the whole training state (weights, Adam state, batch-order and torch random
    states, best epoch so far) is written atomically after every epoch. If it exists when training starts and
    belongs to the same training (seed, batch size, lr, data, parameters), training continues from it and ends
    exactly as an uninterrupted run would; a checkpoint of another training is reported and ignored. The file is
    left in place (the caller removes it once the result is safely stored).
    """
    from .. import _validate

    epochs, batch_size = _validate.count("train: epochs", epochs), _validate.count("train: batch_size", batch_size)
    lr, epsilon = _validate.positive("train: lr", lr), _validate.epsilon(epsilon, "train: epsilon")
    _check_loss(loss)
    classify = loss == "cross_entropy"
    device = default_device(device)
    model.to(device)
    x, y = task_data.train
    xv, yv = task_data.val
    n = x.shape[0]
    _check_task_fits(model, task_data, n, classify)
    params, frozen = _freeze_all_but(model, trainable)
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.CrossEntropyLoss() if classify else _mean_loss(loss)
    gen = torch.Generator().manual_seed(seed)
    best_acc, best_state, best_epoch, history = -1.0, None, epochs, []
    start = time.perf_counter()
    identity = _identity(model, task_data, seed, batch_size, lr, trainable is not None, loss) if checkpoint else None
    state = _load_checkpoint(checkpoint, identity) if checkpoint else None
    first = 1
    try:
        with seeded(seed, device):
            if state is not None:
                _restore_checkpoint(state, model, opt, gen, device)
                best_acc, best_epoch, best_state = state["best_acc"], state["best_epoch"], state["best_state"]
                history, first = list(state["history"]), state["epoch"] + 1
            bar = _progress(range(first, epochs + 1), progress, f"train {getattr(task_data.task, 'name', '')}")
            for epoch in bar:
                model.train(trainable is None)
                rec = {"epoch": epoch, "loss": _epoch(model, opt, loss_fn, x, y, batch_size, gen, device, trainable)}
                if xv.shape[0] > 0:
                    score = _val_score(model, xv, yv, loss, device, rec)
                    if score > best_acc or best_state is None:
                        best_acc, best_epoch = score, epoch
                        best_state = copy.deepcopy(model.state_dict())
                history.append(rec)
                if checkpoint:
                    _save_checkpoint(
                        checkpoint, identity, epoch, model, opt, gen, device, best_acc, best_epoch, best_state, history
                    )
                bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k != "epoch"})
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result = _result(
        model,
        task_data,
        loss,
        best_acc if best_state is not None else None,
        best_epoch,
        epochs,
        time.perf_counter() - start,
        epsilon,
        history,
        device,
    )
    if not result.meets_epsilon:
        warnings.warn(
            f"the {type(model).__name__} trained on task {task_data.task.name!r} reached test accuracy "
            f"{result.test_accuracy:.4f} < 1 − ε = {1 - epsilon:.4f}: it is not an ε-approximation network; "
            "train it longer or pick a larger architecture",
            EpsilonWarning,
            stacklevel=2,
        )
    return result


def train_from_scratch(
    build: Callable[[], nn.Module],
    task_data,
    *,
    seed: int,
    device=None,
    progress: bool = False,
    epsilon: float | None = None,
    **options,
) -> TrainResult:
    """:func:`train` the network ``build()`` makes under torch seeded with ``seed`` (the same initial weights every
    time). Quiet and without an ε check unless asked: the network whose result is wanted (a search's winner, a
    target's reference network). ``options``: :func:`train`'s others (``epochs``, ``batch_size``, ``lr``, ...)."""
    with seeded(seed, device):
        model = build()
    return train(model, task_data, seed=seed, device=device, progress=progress, epsilon=epsilon, **options)


def _val_score(model, xv, yv, loss, device, rec: dict) -> float:
    # One "higher is better" score for both kinds (accuracy, or minus the loss), so the checkpoint keeps one slot.
    if loss == "cross_entropy":
        rec["val_accuracy"] = evaluate(model, xv, yv, device=device)
        return rec["val_accuracy"]
    rec["val_loss"] = evaluate_loss(model, xv, yv, loss)
    return -rec["val_loss"]


def _result(model, task_data, loss, best, best_epoch, epochs, seconds, epsilon, history, device) -> TrainResult:
    if loss == "cross_entropy":
        test_acc = evaluate(model, *task_data.test, device=device)
        return TrainResult(model, test_acc, best, best_epoch, epochs, seconds, epsilon, history)
    test_loss = evaluate_loss(model, *task_data.test, loss)
    return TrainResult(
        model,
        None,
        None,
        best_epoch,
        epochs,
        seconds,
        None,
        history,
        loss_name(loss),
        test_loss,
        None if best is None else -best,
    )


def _mean_loss(loss: Loss):
    from ..fisher.engine import per_sample_loss

    def mean_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_sample_loss(loss, out, y, out.shape[0]).mean()

    return mean_loss


_CHECKPOINT = "fisherx.train-checkpoint"


def _identity(model, task_data, seed, batch_size, lr, frozen, loss="cross_entropy") -> dict:
    # What must match for a checkpoint to continue this training (epochs may grow: no schedule depends on them).
    data = task_data.fingerprint() if hasattr(task_data, "fingerprint") else None
    ident = {
        "format": _CHECKPOINT,
        "version": 1,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "frozen_features": frozen,
        "data": data,
        "params": [[k, list(v.shape)] for k, v in model.state_dict().items()],
    }
    if loss != "cross_entropy":  # cross-entropy checkpoints keep the identity they always had
        ident["loss"] = loss_name(loss)
    return ident


def _load_checkpoint(path, identity: dict) -> dict | None:
    from ..io import FormatError, load_tree

    try:
        state = load_tree(path)
    except FileNotFoundError:
        return None
    except (FormatError, OSError) as exc:
        warnings.warn(f"ignoring unreadable training checkpoint {path} ({exc}); training from the start", stacklevel=3)
        return None
    if not isinstance(state, dict) or state.get("identity") != identity:
        warnings.warn(
            f"ignoring training checkpoint {path}: it belongs to another training (seed, batch size, "
            "lr, data or parameters differ); training from the start",
            stacklevel=3,
        )
        return None
    return state


def _save_checkpoint(path, identity, epoch, model, opt, gen, device, best_acc, best_epoch, best_state, history):
    from ..io import save_tree

    def cpu(sd):
        return None if sd is None else {k: v.detach().cpu() for k, v in sd.items()}

    save_tree(
        path,
        {
            "identity": identity,
            "epoch": epoch,
            "model": cpu(model.state_dict()),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "best_acc": best_acc,
            "best_epoch": best_epoch,
            "best_state": cpu(best_state),
            "history": history,
        },
    )


def _check_task_fits(model: nn.Module, task_data, n: int, classify: bool) -> None:
    if n == 0:
        raise ValueError(f"train: task {getattr(task_data.task, 'name', '?')!r} has no training samples")
    out_features = getattr(getattr(model, "classifier", None), "out_features", None)
    if classify and out_features is not None and out_features < task_data.num_classes:
        raise ValueError(
            f"train: the model has {out_features} outputs but task {task_data.task.name!r} has "
            f"{task_data.num_classes} labels"
        )


def _freeze_all_but(model: nn.Module, trainable) -> tuple[list, list]:
    """(the parameters to train, the ones frozen for the training: given back by the caller afterwards)."""
    if trainable is None:
        return [p for p in model.parameters() if p.requires_grad], []
    params = list(trainable)
    ids = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    return params, frozen


def _restore_checkpoint(state: dict, model: nn.Module, opt, gen: torch.Generator, device: torch.device) -> None:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _epoch(model, opt, loss_fn, x, y, batch_size: int, gen: torch.Generator, device, trainable) -> float:
    """One shuffled pass over (x, y); returns the mean training loss."""
    n = x.shape[0]
    order = torch.randperm(n, generator=gen)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        if trainable is None and idx.numel() == 1 and n > 1:
            continue  # BatchNorm cannot train on a batch of one sample
        xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        batch_loss = loss_fn(model(xb), yb)
        batch_loss.backward()
        opt.step()
        total += float(batch_loss.detach()) * idx.numel()
        count += idx.numel()
    return total / max(count, 1)


def _progress(it, enabled: bool | None, desc: str) -> Progress:
    return Progress(it, desc=desc, unit="epoch", leave=False, enabled=enabled)
