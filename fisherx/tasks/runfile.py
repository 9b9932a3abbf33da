"""Runs the command line reads from the user's own files: ``FILE.py:NAME`` / ``module:NAME`` references (the
convention of uvicorn and gunicorn) and declarative TOML run files.

A run file (paths relative to the file)::

    seeds = [0, 1]
    epochs = 5
    [model]
    factory = "models.py:mlp"     # or arch = "cnn", or archs = ["cnn", "mlp"]
    [[tasks]]
    name = "A"
    npz = "a.npz"                 # x_train, y_train, x_test, y_test (+ x_val, y_val, class_names)
    classes = ["0", "1"]
    other = true
    [[tasks]]
    name = "B"
    source = "cifar10"            # or "imagefolder", "mnist", "digits"
    data_dir = "cifar-10-batches-py"
    classes = ["cat", "dog"]

Every key is checked: an unknown one is refused by name.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .task import Task

TASK_KEYS = {
    "name",
    "npz",
    "source",
    "data_dir",
    "classes",
    "other",
    "balanced",
    "seed",
    "val_fraction",
    "max_train_per_label",
    "image_size",
    "label_names",
}
# Top-level keys passed to task_distances as they are.
RUN_KEYS = {
    "seeds",
    "epochs",
    "metric",
    "batch_size",
    "lr",
    "epsilon",
    "head",
    "head_epochs",
    "fisher_samples",
    "bootstrap",
    "gates",
    "loss",
    "device",
    "cache_dir",
    "data_dir",
}
MODEL_KEYS = {"factory", "arch", "archs"}


def load_attr(spec: str, what: str = "object") -> Any:
    """The object named by ``FILE.py:NAME`` or ``package.module:NAME`` (NAME may be dotted)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{what} {spec!r} must be FILE.py:NAME or module:NAME")
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ValueError(f"{what} {spec!r} must be FILE.py:NAME or module:NAME")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{what} {spec!r}: file {path} not found")
        mod_name = f"_fisherx_user_{abs(hash(str(path)))}"
        spec_obj = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[mod_name] = module  # dataclasses and pickling-free introspection need the module registered
        spec_obj.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            names = ", ".join(n for n in dir(module) if not n.startswith("_"))
            raise AttributeError(f"{what} {spec!r}: {where} has no {name!r} (it defines: {names})")
        obj = getattr(obj, part)
    return obj


def load_tasks(spec: str) -> list:
    """Tasks from ``FILE.py:NAME``: a list of tasks, or a function returning one."""
    obj = load_attr(spec, "--tasks")
    if callable(obj) and not isinstance(obj, (list, tuple)):
        try:
            obj = obj()
        except TypeError as exc:
            raise TypeError(
                f"--tasks {spec!r} must name a list of fisherx Tasks or a function of no arguments "
                f"returning one ({exc})"
            ) from None
    if not isinstance(obj, (list, tuple)) or not all(hasattr(t, "load") and hasattr(t, "name") for t in obj):
        raise TypeError(
            f"--tasks {spec!r} must name a list of fisherx Tasks (or a function returning one), got "
            f"{type(obj).__name__}"
        )
    return list(obj)


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise ImportError("reading a TOML run file on Python 3.10 needs tomli: pip install tomli") from exc
    if not path.is_file():
        raise FileNotFoundError(f"run file {path} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None


def _unknown(keys, allowed, where: str) -> None:
    bad = sorted(set(keys) - allowed)
    if bad:
        raise ValueError(f"{where}: unknown key(s) {', '.join(bad)} (allowed: {', '.join(sorted(allowed))})")


def _task(entry: dict, base: Path, i: int, where: str) -> Task:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: tasks[{i}] must be a table")
    _unknown(entry, TASK_KEYS, f"{where} tasks[{i}]")
    if "name" not in entry:
        raise ValueError(f"{where}: tasks[{i}] has no name")
    opts = {k: v for k, v in entry.items() if k not in ("name", "npz", "source", "data_dir")}
    for k in ("classes", "label_names"):
        if opts.get(k) is not None:
            opts[k] = tuple(tuple(c) if isinstance(c, list) else c for c in opts[k])
    if ("npz" in entry) == ("source" in entry):
        raise ValueError(f"{where}: task {entry['name']!r} needs exactly one of npz = FILE or source = NAME")
    if "npz" in entry:
        if "image_size" in opts:
            raise ValueError(f"{where}: task {entry['name']!r}: image_size applies to a source, not an npz file")
        return Task.from_npz(entry["name"], base / entry["npz"], **opts)
    data_dir = str(base / entry["data_dir"]) if "data_dir" in entry else None
    return Task(entry["name"], entry["source"], data_dir=data_dir, **opts)


def read_run(path) -> dict:
    """A run file as keyword arguments of :func:`fisherx.task_distances`: ``tasks``, ``model`` or ``archs``, and
    the run's settings."""
    path = Path(path).expanduser().resolve()
    cfg = _read_toml(path)
    where, base = str(path), path.parent
    _unknown(cfg, RUN_KEYS | {"tasks", "model"}, where)
    tasks = cfg.get("tasks")
    if not isinstance(tasks, list) or len(tasks) < 2:
        raise ValueError(f"{where}: needs at least two [[tasks]] tables")
    run = {k: v for k, v in cfg.items() if k in RUN_KEYS}
    if "data_dir" in run:
        run["data_dir"] = str(base / run["data_dir"])
    if "cache_dir" in run:
        run["cache_dir"] = str(base / run["cache_dir"])
    run["tasks"] = [_task(t, base, i, where) for i, t in enumerate(tasks)]
    model = cfg.get("model", {})
    if not isinstance(model, dict):
        raise ValueError(f"{where}: [model] must be a table")
    _unknown(model, MODEL_KEYS, f"{where} [model]")
    if len(model) > 1:
        raise ValueError(f"{where} [model]: give one of factory, arch or archs")
    if "factory" in model:
        ref = model["factory"]
        if ":" in ref and not Path(ref.rpartition(":")[0]).is_absolute() and ref.rpartition(":")[0].endswith(".py"):
            ref = f"{base / ref.rpartition(':')[0]}:{ref.rpartition(':')[2]}"
        run["model"] = load_attr(ref, "[model] factory")
    elif "arch" in model:
        run["archs"] = [model["arch"]]
    elif "archs" in model:
        run["archs"] = list(model["archs"])
    return run
