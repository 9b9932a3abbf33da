"""The options several ``fisherx`` subcommands share, each declared once here with one meaning.

A subcommand takes the ones it needs with :func:`add`, optionally with its own default (``--epochs`` trains for
10 epochs in ``distances`` and 20 in ``retrain``, but it is the training epochs of a network in both)::

    options.add(p, "preset", "data-dir", "device", "quiet")
    options.add(p, "epochs", default=20)

Lists are comma-separated everywhere (``--seeds 0,1,2``, ``--archs mlp,cnn``, ``--tasks T0,T1``) and parsed
into tuples here, so no command reads a list option differently.
"""

from __future__ import annotations

import argparse

from .. import _validate


def comma_list(text: str) -> tuple:
    """``"a,b,,c"`` → ``("a", "b", "c")``: a comma-separated list option (empty items dropped)."""
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def int_list(text: str) -> tuple:
    """``"0,1,2"`` → ``(0, 1, 2)``: a comma-separated list of integers (``--seeds``)."""
    try:
        return tuple(int(s) for s in comma_list(text))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None


def _checked(check):
    """An argparse ``type`` from a :mod:`fisherx._validate` check: its ValueError becomes a usage error (exit 2)."""

    def parse(text: str):
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = check.__name__
    return parse


def _number(text: str, cast):
    try:
        return cast(text)
    except ValueError:
        raise ValueError(f"expected {'an integer' if cast is int else 'a number'}, got {text!r}") from None


@_checked
def count(text: str) -> int:
    """An integer >= 1 (epochs, rounds, batch sizes, sample caps)."""
    return _validate.count("the value", _number(text, int))


@_checked
def nonnegative(text: str) -> int:
    """An integer >= 0 (bootstrap replicates)."""
    return _validate.count("the value", _number(text, int), 0)


@_checked
def rate(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    return _validate.positive("the value", _number(text, float))


@_checked
def epsilon(text: str) -> float:
    """ε of an ε-approximation network: a number in [0, 1)."""
    return _validate.epsilon(_number(text, float), "epsilon")


@_checked
def seed_list(text: str) -> tuple:
    """Distinct integer seeds, comma-separated (``--seeds 0,1,2``)."""
    return tuple(_validate.seeds(int_list(text)))


@_checked
def device(text: str) -> str:
    """A torch device that exists here: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` ..."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ValueError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{text!r} was asked for but this machine has no usable CUDA device; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{text!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


# name -> keyword arguments of ``add_argument`` (the flag is ``--name``); a command may override the default.
OPTIONS: dict[str, dict] = {
    "preset": dict(default="digits", help="digits (built in), mnist, cifar10, cifar100 or imagenet"),
    "data-dir": dict(default=None, help="folder with the dataset's files (not needed for digits)"),
    "device": dict(type=device, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
    "quiet": dict(action="store_true", help="no progress bars"),
    "out": dict(required=True, help="output folder"),
    "archs": dict(
        type=comma_list,
        default=("cnn",),
        help="comma-separated network architectures: vgg16,resnet18,densenet121,cnn,mlp",
    ),
    "seeds": dict(
        type=seed_list, default=(0, 1, 2), help="comma-separated network seeds, e.g. 0,1,2 (mean ± std over them)"
    ),
    "tasks": dict(type=comma_list, default=None, help="comma-separated subset of the preset's tasks (e.g. T0,T1,T2)"),
    "epochs": dict(type=count, default=10, help="training epochs of every network"),
    "batch-size": dict(type=count, default=128, help="minibatch size"),
    "lr": dict(type=rate, default=1e-3, help="Adam learning rate of the networks' weights"),
    "rounds": dict(type=count, default=10, help="FUSE rounds"),
    "seed": dict(type=int, default=0, help="seed of initialisation, batch order and search"),
    "fisher-samples": dict(type=count, default=None, help="at most this many test samples per Fisher"),
    "max-train-per-label": dict(type=count, default=None, help="cap training samples per label"),
    "task-seed": dict(type=int, default=0, help="seed of the balanced draw and validation split"),
    "image-size": dict(type=count, default=None, help="resize the images to this side"),
    "cache-dir": dict(default=None, help="cache of networks and Fishers (default OUT/cache): a rerun resumes from it"),
    "bootstrap": dict(
        type=nonnegative,
        default=0,
        help="bootstrap replicates per Fisher over the test samples: intervals and P(closest) (0: none)",
    ),
    "width": dict(type=count, default=None, help="the skeleton's width: channels of the first cells (even)"),
    "depth": dict(type=count, default=None, help="the skeleton's number of cells"),
}


def add(p: argparse.ArgumentParser, *names: str, **overrides) -> None:
    """Declare the shared options ``names`` on ``p``; ``overrides`` (e.g. ``default=20``, ``help=...``) apply to
    every one of them, so pass one name when overriding."""
    if overrides and len(names) != 1:
        raise ValueError("options.add: overrides apply to a single option; add the others separately")
    for name in names:
        if name not in OPTIONS:
            raise KeyError(f"no shared option --{name}; declare it in fisherx/cli/options.py (or locally)")
        kw = {**OPTIONS[name], **overrides}
        if "default" in overrides and kw.get("required"):
            kw.pop("required")
        p.add_argument(f"--{name}", **kw)
