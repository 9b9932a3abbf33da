"""The networks of a task-distance run: built-in architectures by name, the user's factories
(``factory(num_outputs) -> nn.Module``), or ready trained ε-networks per task; and the checks that make a wrong
one fail with one line before any training."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .. import models as _models

GIVEN = "given"  # the architecture name of ready trained networks (task_distances(networks=...))


def builders(archs, model) -> tuple[dict[str, Callable[[int, int, int], nn.Module]], set]:
    """(name → build(in_channels, width, image_size), the names that are the user's factories). ``model``: None
    (the built-in ``archs``), a built-in name, a factory ``factory(num_outputs)``, or a dict name → either."""
    if model is None:
        chosen = {a: a for a in archs}
    elif isinstance(model, str) or callable(model):
        chosen = {_name(model): model}
    elif isinstance(model, Mapping) and model:
        chosen = dict(model)
    else:
        raise TypeError(
            f"model must be a built-in architecture name, a factory num_outputs -> nn.Module or a dict "
            f"of them, got {type(model).__name__}"
        )
    out, factories = {}, set()
    for name, m in chosen.items():
        if isinstance(m, str):
            if m not in _models.ARCHS:
                raise ValueError(
                    f"unknown architecture {m!r}; choose one of {', '.join(_models.ARCHS)} or pass "
                    "model=factory (a function num_outputs -> nn.Module)"
                )
            out[str(name)] = lambda c, w, s, m=m: _models.build(m, c, w, s)
        elif callable(m):
            out[str(name)] = lambda c, w, s, m=m, name=name: _call_factory(m, w, name)
            factories.add(str(name))
        else:
            raise TypeError(f"model {name!r}: expected a factory or a built-in name, got {type(m).__name__}")
    return out, factories


def _name(model) -> str:
    return model if isinstance(model, str) else getattr(model, "__name__", type(model).__name__)


def _call_factory(factory, width: int, name: str) -> nn.Module:
    net = factory(width)
    if not isinstance(net, nn.Module):
        raise TypeError(f"model factory {name!r} returned {type(net).__name__}, not an nn.Module")
    return net


def check_head(net: nn.Module, sample_x: torch.Tensor, width: int, name: str, target_shape=None) -> None:
    """Refuse a network whose output does not have the family's head width (or the targets' shape)."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(sample_x)
    except Exception as exc:  # the user's network and the task's inputs do not fit: say which
        raise ValueError(
            f"network {name!r} cannot run on the task's inputs of shape {tuple(sample_x.shape[1:])}: "
            f"{type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    finally:
        net.train(was)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"network {name!r} returns {type(out).__name__}; task_distances needs a logits tensor")
    want = (width,) if target_shape is None else tuple(target_shape)
    if tuple(out.shape[1:]) != want:
        what = (
            f"num_outputs={width} (the family's largest label count)"
            if target_shape is None
            else f"targets of shape {want}"
        )
        raise ValueError(
            f"network {name!r} returns outputs of shape {tuple(out.shape[1:])} per sample but the "
            f"family needs {want}: its head has the wrong width for {what}"
        )


def state_sha256(net: nn.Module) -> str:
    """SHA-256 of a network's structure and weights: what identifies a given or freshly built network in the cache."""
    h = hashlib.sha256(repr(net).encode())
    for k, v in net.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def given_networks(networks: Mapping, task_names: list[str]) -> dict[str, nn.Module]:
    """The ready trained networks, one per task, checked."""
    if not isinstance(networks, Mapping):
        raise TypeError(f"networks must be a dict task name -> trained nn.Module, got {type(networks).__name__}")
    missing = [t for t in task_names if t not in networks]
    extra = [t for t in networks if t not in task_names]
    if missing or extra:
        raise ValueError(
            "networks must hold one trained network per task: "
            + "; ".join(
                p
                for p in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(map(str, extra))}" if extra else "",
                )
                if p
            )
        )
    for t in task_names:
        if not isinstance(networks[t], nn.Module):
            raise TypeError(f"networks[{t!r}] is a {type(networks[t]).__name__}, not an nn.Module")
    return {t: networks[t] for t in task_names}


def train_kwargs(train, loss, optimizer) -> dict:
    """The extra keyword arguments for :func:`fisherx.models.train`: ``loss`` and ``optimizer`` where they differ
    from its defaults (refused clearly when this fisherx's ``train`` cannot take them)."""
    params = inspect.signature(train).parameters
    kw = {}
    for key, value, default in (("loss", loss, "cross_entropy"), ("optimizer", optimizer, None)):
        if value is not default and value != default:
            if key not in params:
                raise ValueError(
                    f"fisherx.models.train takes no {key}=; pass train_fn=... to train the networks "
                    f"your way (train_fn(model, task_data, seed=...))"
                )
            kw[key] = value
    return kw


def qualname(fn) -> str | None:
    """A function's module and qualified name, for cache keys and results (None for None)."""
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def accuracy(net: nn.Module, data, loss, device) -> float | None:
    """Test accuracy of ``net`` for cross-entropy; None for other losses (accuracy means nothing there)."""
    if loss != "cross_entropy":
        return None
    return _models.evaluate(net, *data.test, device=device)


def run_train_fn(train_fn, net: nn.Module, data, seed: int, device) -> float | None:
    """Train ``net`` with the user's ``train_fn(model, task_data, seed=seed)`` (in place)."""
    net.to(device)
    res = train_fn(net, data, seed=seed)
    if isinstance(res, nn.Module) and res is not net:
        raise ValueError("train_fn must train the model it is given in place (it returned another module)")
    net.eval()
    return None


@dataclass
class UserNetworks:
    """How one task_distances run gets its networks and losses (built-in archs, the user's factories, or given
    networks) and what its training calls need."""

    archs: list
    seeds: list
    build: dict
    factories: set
    given: dict | None
    loss: object
    loss_key: str
    train_fn: Callable | None
    optimizer: Callable | None
    extra_train: dict


def plan(tasks, archs, seeds, model, networks, loss, train_fn, optimizer, head: str) -> UserNetworks:
    """Check the network arguments of task_distances and resolve them (one-line errors for each bad one)."""
    from ..models.training import train

    given = None
    if networks is not None:  # ready ε-networks: one set, no training
        if model is not None or train_fn is not None:
            raise ValueError("networks= are used as given: model= and train_fn= do not apply to them")
        given = given_networks(networks, [t.name for t in tasks])
        archs, seeds, build, factories = [GIVEN], seeds[:1], {}, set()
    else:
        build, factories = builders(archs, model)
        archs = list(build)
    if head == "refit" and (given is not None or model is not None):
        raise ValueError(
            "head='refit' refits the built-in networks' classifier; use head='shared' with model= or networks="
        )
    if not callable(loss) and loss not in ("cross_entropy", "mse"):
        raise ValueError(
            f"loss must be 'cross_entropy', 'mse' or a callable (output, target) -> per-sample losses, got {loss!r}"
        )
    loss_key = loss if isinstance(loss, str) else getattr(loss, "__qualname__", type(loss).__name__)
    extra = {} if train_fn is not None else train_kwargs(train, loss, optimizer)
    return UserNetworks(archs, seeds, build, factories, given, loss, loss_key, train_fn, optimizer, extra)
