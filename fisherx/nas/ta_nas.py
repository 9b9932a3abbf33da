"""TA-NAS: task-aware architecture search from a dictionary of solved baseline tasks (Algorithm 2; docs/nas.md).

For a target task b and baseline tasks a ∈ A, each with an ε-approximation network N_a, a search space S_a and a
best genotype:

    d[a, b] = FTD(F_ab, F_bb) = (1/√2)·‖√F̂_ab − √F̂_bb‖₂        (F̂ = F / tr F, diagonal empirical Fishers)
    a* = argmin_a d[a, b]
    c* = FUSE(S_{a*}, b)

F_ab is the Fisher of N_a on b's **test** data with b's labels, F_bb that of b's own ε-network on the same data
(docs/tasks.md). All ε-networks of one dictionary form a *family*: one architecture, one head width (the family's
largest label count, as :func:`fisherx.task_distances` does in its default "shared" mode), and one training recipe
including the initialisation seed, so every Fisher covers the same parameters, b's labels index N_a's logits
directly, and the networks differ only by the task they learned (in ``task_distances`` too, d[a, b] compares
networks of one seed). A target with more labels than the head width is refused.

The dictionary is a directory::

    dictionary.json            versioned index: the family (arch, head width, input shape) and one entry per task
                               (task config, ε-network accuracy and training settings, search space, best genotype)
    .dictionary.lock           the inter-process lock (filelock) under which the index is read, merged and rewritten
    <task>/eps_network.fx      the ε-network's weights (fisherx.io.save_tree: checksummed, atomic, no pickle)
    <task>/genotype.json       the best genotype, readable on its own

It grows as tasks are solved (:func:`add_baseline`, or ``ta_nas(..., grow=True)``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from filelock import FileLock
from torch import nn

from .._progress import note
from ..io import FormatError, atomic_write_text, load_tree, save_tree
from ..io.files import parse_json
from ._common import device_name, pick_device, resolve_data, show_progress
from .cost import CostMeter
from .determinism import reproducible
from .fuse import fuse
from .genotype import Genotype
from .random_search import random_search
from .runner import SearchResult
from .space import SearchSpace

DICTIONARY_FORMAT = "fisherx.task_dictionary"
DICTIONARY_VERSION = 1
INDEX = "dictionary.json"
LOCK = ".dictionary.lock"  # the inter-process lock every change to the index takes (filelock)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class SearchBudget:
    """The sizes of one TA-NAS pipeline, kept together so that the demo, the reproduction and ``fisherx search``
    state them once: ``eps_epochs`` of a new dictionary's ε-networks, the general space's skeleton (``width``,
    ``depth``) and FUSE's budget (``candidates``, ``rounds``, ``alternations``, ``final_epochs``, ``batch_size``).
    The defaults are ``fisherx search``'s."""

    eps_epochs: int = 10
    width: int = 8
    depth: int = 3
    candidates: int = 3
    rounds: int = 10
    alternations: int = 10
    final_epochs: int = 20
    batch_size: int = 64
    # the fields that are FUSE's own keyword arguments (the others size the ε-networks and the space)
    FUSE_FIELDS: ClassVar[tuple[str, ...]] = ("candidates", "rounds", "alternations", "final_epochs", "batch_size")

    @classmethod
    def pick(cls, values: Mapping[str, Any]) -> SearchBudget:
        """The budget whose fields are read from ``values`` (e.g. ``vars(args)``); other keys are ignored."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def fuse_options(self) -> dict:
        """The keyword arguments of :func:`fisherx.nas.fuse` (and so of :func:`add_baseline`, :func:`ta_nas`)."""
        return {k: getattr(self, k) for k in self.FUSE_FIELDS}

    def general_space(self) -> SearchSpace:
        """The general space (all operations) on this budget's skeleton: where the baselines are searched."""
        return SearchSpace.general(width=self.width, depth=self.depth)


def _dictionary_lock(path: Path) -> FileLock:
    return FileLock(str(Path(path) / LOCK), timeout=600)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"baseline name {name!r} is not usable as a folder name: use letters, digits, '_', '-', '.'")
    return name


@dataclass
class DictionaryEntry:
    """One solved baseline task: its ε-network's accuracy and training settings, its space and best genotype."""

    name: str
    task: dict
    eps: dict
    space: SearchSpace
    genotype: Genotype
    search: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "eps": self.eps,
            "space": self.space.to_dict(),
            "genotype": self.genotype.to_dict(),
            "search": self.search,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str) -> DictionaryEntry:
        if not isinstance(d, dict):
            raise FormatError(f"{source}: an entry must be a JSON object, got {type(d).__name__}")
        try:
            return cls(
                _check_name(d["name"]),
                d["task"],
                d["eps"],
                SearchSpace.from_dict(d["space"], f"{source}: space"),
                Genotype.from_dict(d["genotype"], f"{source}: genotype"),
                d.get("search", {}),
            )
        except KeyError as e:
            raise FormatError(f"{source}: entry lacks {e}") from None
        except (TypeError, ValueError) as e:  # a bad name, space or genotype (GenotypeError, SearchSpaceError)
            raise FormatError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None


class TaskDictionary:
    """The dictionary of baseline tasks on disk (see the module docstring). Open an existing one with
    ``TaskDictionary(path)``; make a new one with :meth:`create`."""

    def __init__(self, path):
        self.path = Path(path)
        index = self.path / INDEX
        if not index.is_file():
            raise FileNotFoundError(f"{index} does not exist; make a dictionary with TaskDictionary.create(...)")
        self.family, self.entries = self._read()

    def _lock(self) -> FileLock:
        # Every change is read-merge-write under this inter-process lock, so concurrent adds never lose an entry.
        return _dictionary_lock(self.path)

    def _read(self) -> tuple[dict, dict[str, DictionaryEntry]]:
        """(family, entries) of the index on disk; anything malformed is a FormatError naming the index."""
        index = self.path / INDEX
        try:
            raw = index.read_bytes()
        except OSError as e:
            raise FormatError(f"{index}: cannot read the dictionary index ({e.strerror or e})") from None
        d = parse_json(raw, str(index))
        if not isinstance(d, dict) or d.get("format") != DICTIONARY_FORMAT:
            raise FormatError(f"{index} is not a fisherx task dictionary")
        if d.get("version") != DICTIONARY_VERSION:
            raise FormatError(
                f"{index}: dictionary version {d.get('version')!r:.40} is not supported (this fisherx "
                f"reads version {DICTIONARY_VERSION})"
            )
        fam = d.get("family", {})
        if not isinstance(fam, dict) or not isinstance(fam.get("eps", {}), dict):
            raise FormatError(f"{index}: the family is not a JSON object")
        missing = {"arch", "head_width", "in_channels", "image_size", "eps"} - set(fam)
        if missing:
            raise FormatError(f"{index}: the family lacks {sorted(missing)}")
        if not isinstance(d.get("entries", []), list):
            raise FormatError(f"{index}: entries must be a list")
        entries: dict[str, DictionaryEntry] = {}
        for i, e in enumerate(d.get("entries", [])):
            entry = DictionaryEntry.from_dict(e, f"{index} entry {i}")
            if entry.name in entries:
                raise FormatError(f"{index}: two entries named {entry.name!r}")
            entries[entry.name] = entry
        return fam, entries

    @classmethod
    def create(
        cls,
        path,
        *,
        arch: str,
        head_width: int,
        in_channels: int,
        image_size: int,
        eps_epochs: int = 10,
        eps_seed: int = 0,
        eps_batch_size: int = 128,
        eps_lr: float = 1e-3,
        exist_ok: bool = False,
    ) -> TaskDictionary:
        """An empty dictionary whose ε-networks are ``arch`` with ``head_width`` outputs on
        ``in_channels``×``image_size``² inputs, each trained with :func:`fisherx.models.train` for ``eps_epochs``
        epochs (Adam ``eps_lr``, batch ``eps_batch_size``) from the initialisation of ``eps_seed``; the target's
        ε-network in :func:`ta_nas` is trained the same way. Refuses to overwrite an existing dictionary; with
        ``exist_ok`` an existing one of the same family is opened instead (two processes creating the same
        dictionary at once both succeed), one of another family is refused naming the difference."""
        from .. import models

        if arch not in models.ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(models.ARCHS)}")
        path = Path(path)
        fam = {
            "arch": arch,
            "head_width": int(head_width),
            "in_channels": int(in_channels),
            "image_size": int(image_size),
            "eps": {
                "epochs": int(eps_epochs),
                "seed": int(eps_seed),
                "batch_size": int(eps_batch_size),
                "lr": float(eps_lr),
            },
        }
        path.mkdir(parents=True, exist_ok=True)
        with _dictionary_lock(path):  # check-and-create as one step: no other process can create in between
            if (path / INDEX).exists():
                if not exist_ok:
                    raise FileExistsError(f"{path / INDEX} already exists; open it with TaskDictionary(path)")
                found = cls(path)
                if found.family != fam:
                    diff = sorted(k for k in fam if found.family.get(k) != fam[k])
                    raise ValueError(
                        f"{path / INDEX} already holds a dictionary of another family (differs in "
                        f"{', '.join(diff)}: {[found.family.get(k) for k in diff]} vs "
                        f"{[fam[k] for k in diff]})"
                    )
                return found
            atomic_write_text(
                path / INDEX,
                json.dumps(
                    {"format": DICTIONARY_FORMAT, "version": DICTIONARY_VERSION, "family": fam, "entries": []}, indent=1
                )
                + "\n",
            )
        return cls(path)

    @classmethod
    def open_or_create(cls, path, **family) -> TaskDictionary:
        """The dictionary at ``path`` as it is, when there is one; else a new one, :meth:`create` with ``family``.

        Unlike ``create(..., exist_ok=True)``, an existing dictionary is not compared with ``family``, so a rerun with
        other ε settings (``fisherx demo --epochs``) keeps the dictionary, and the networks, it already made."""
        path = Path(path)
        if (path / INDEX).exists():
            return cls(path)
        return cls.create(path, exist_ok=True, **family)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> DictionaryEntry:
        if name not in self.entries:
            raise KeyError(f"no baseline {name!r} in {self.path} (it has: {', '.join(self.entries) or 'none'})")
        return self.entries[name]

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def _eps_file(self, name: str) -> Path:
        return self.path / _check_name(name) / "eps_network.fx"

    def new_network(self) -> nn.Module:
        """A fresh network of the family's architecture and head width."""
        from .. import models

        f = self.family
        return models.build(f["arch"], f["in_channels"], f["head_width"], f["image_size"])

    def check_task(self, data: Any, name: str = "target") -> None:
        """Refuse task data whose Fishers could not be compared with the family's."""
        f = self.family
        if (data.in_channels, data.image_size) != (f["in_channels"], f["image_size"]):
            raise ValueError(
                f"task {name!r} has {data.in_channels}×{data.image_size}×{data.image_size} inputs; the "
                f"dictionary's networks take {f['in_channels']}×{f['image_size']}×{f['image_size']}"
            )
        if data.num_classes > f["head_width"]:
            raise ValueError(
                f"task {name!r} has {data.num_classes} labels but the dictionary's networks have "
                f"{f['head_width']} outputs: its labels cannot index their logits (make a dictionary "
                f"with head_width ≥ {data.num_classes})"
            )

    def eps_network(self, name: str, device=None) -> nn.Module:
        """Baseline ``name``'s ε-network, loaded in eval mode."""
        self[name]  # a KeyError listing the baselines there are
        p = self._eps_file(name)
        state, meta = load_tree(p, with_meta=True)
        expect = {k: self.family[k] for k in ("arch", "head_width", "in_channels", "image_size")}
        if {k: meta.get(k) for k in expect} != expect:
            raise FormatError(
                f"{p} holds a network of another family ({ {k: meta.get(k) for k in expect} }, expected {expect})"
            )
        net = self.new_network()
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise FormatError(f"{p}: the weights do not fit the family's {self.family['arch']}: {e}") from None
        return net.to(pick_device(device)).eval()

    def add(
        self,
        name: str,
        *,
        task: dict,
        eps_network: nn.Module,
        eps: dict,
        space: SearchSpace,
        genotype: Genotype,
        search: dict | None = None,
        replace: bool = False,
    ) -> DictionaryEntry:
        """Store a solved task: the ε-network's weights first, then the index (each write atomic), so a crash
        leaves either the old dictionary or the new one. The index is re-read, merged and rewritten under an
        inter-process lock: entries other processes added meanwhile are kept. If another process added ``name``
        since this dictionary was opened (two identical runs at once), its entry is kept and returned."""
        _check_name(name)
        space.check(genotype)
        known = set(self.entries)
        with self._lock():
            self.family, self.entries = self._read()
            if name in self.entries and not replace:
                if name not in known:  # a concurrent run solved the same task first: theirs stands
                    return self.entries[name]
                raise ValueError(f"{self.path} already has a baseline {name!r} (pass replace=True to overwrite it)")
            state = {k: v.detach().cpu() for k, v in eps_network.state_dict().items()}
            save_tree(
                self._eps_file(name),
                state,
                meta={k: self.family[k] for k in ("arch", "head_width", "in_channels", "image_size")},
            )
            genotype.save(self.path / name / "genotype.json", space=space)
            entry = DictionaryEntry(name, task, eps, space, genotype, search or {})
            self.entries[name] = entry
            self._write_index()
        return entry

    def reload(self) -> TaskDictionary:
        """Re-read the index (entries other processes added since this one was opened)."""
        self.family, self.entries = self._read()
        return self

    def _write_index(self) -> None:
        atomic_write_text(
            self.path / INDEX,
            json.dumps(
                {
                    "format": DICTIONARY_FORMAT,
                    "version": DICTIONARY_VERSION,
                    "family": self.family,
                    "entries": [e.to_dict() for e in self.entries.values()],
                },
                indent=1,
            )
            + "\n",
        )

    def __repr__(self) -> str:
        return f"TaskDictionary({str(self.path)!r}, {self.family['arch']}, baselines {self.names()})"


# ---------------------------------------------------------------------------------------------------------------


def _task_config(task: Any, data: Any) -> dict:
    """What the dictionary records of a task: how to rebuild it. A user task built from in-memory data cannot be
    rebuilt and is refused (``rebuild_spec`` says what to pass instead)."""
    t = getattr(data, "task", None) or task
    if hasattr(t, "rebuild_spec"):
        return t.rebuild_spec()
    return t.config() if hasattr(t, "config") else {"name": getattr(t, "name", str(t))}


def _task_name(task: Any, data: Any) -> str:
    t = getattr(data, "task", None) or task
    return getattr(t, "name", "target")


def train_eps_network(
    dictionary: TaskDictionary,
    data: Any,
    *,
    epsilon: float | None = 0.1,
    device=None,
    out_file=None,
    progress: bool = False,
) -> tuple[nn.Module, dict]:
    """Train the family's network on ``data`` with the family's recipe (:func:`fisherx.models.train`). With
    ``out_file`` the trained network is saved there and reloaded on the next call with the same recipe."""
    from ..models.training import seeded, train

    device = pick_device(device)
    recipe = dictionary.family["eps"]
    info = {"arch": dictionary.family["arch"], "head_width": dictionary.family["head_width"], **recipe}
    if out_file is not None and Path(out_file).is_file():
        state, meta = load_tree(out_file, with_meta=True)
        if meta.get("settings") == info:
            net = dictionary.new_network()
            net.load_state_dict(state)
            return net.to(device).eval(), meta["eps"]
    with seeded(recipe["seed"], device):
        net = dictionary.new_network()
    res = train(
        net,
        data,
        epochs=recipe["epochs"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        seed=recipe["seed"],
        device=device,
        progress=progress,
        epsilon=epsilon,
    )
    eps = {
        **info,
        "test_accuracy": res.test_accuracy,
        "val_accuracy": res.val_accuracy,
        "meets_epsilon": res.meets_epsilon,
        "epsilon": epsilon,
        "train_s": res.seconds,
    }
    if out_file is not None:
        save_tree(
            out_file, {k: v.detach().cpu() for k, v in net.state_dict().items()}, meta={"settings": info, "eps": eps}
        )
    return net.eval(), eps


def add_baseline(
    dictionary: TaskDictionary,
    task: Any,
    *,
    space: SearchSpace | None = None,
    data_dir=None,
    device=None,
    out_dir=None,
    progress: bool | None = None,
    **search,
) -> DictionaryEntry:
    """Solve a baseline task and add it: train its ε-network, search the general space (or ``space``) with FUSE
    (``search`` is passed to :func:`fisherx.nas.fuse`), derive the task's space from the best genotype
    (:meth:`SearchSpace.from_genotypes`, same skeleton) and store all three."""
    data = resolve_data(task, data_dir)
    name = _task_name(task, data)
    dictionary.check_task(data, name)
    record = _task_config(task, data)  # refused before any training when the task cannot be recorded
    space = space or SearchSpace.general()
    out = Path(out_dir) / name if out_dir is not None else None
    net, eps = train_eps_network(
        dictionary,
        data,
        device=device,
        out_file=out / "eps_network.fx" if out else None,
        progress=show_progress(progress),
    )
    res = fuse(space, data, device=device, out_dir=out / "fuse" if out else None, progress=progress, **search)
    derived = SearchSpace.from_genotypes(res.genotype, base=space, name=name)
    return dictionary.add(
        name, task=record, eps_network=net, eps=eps, space=derived, genotype=res.genotype, search=_brief(res)
    )


def _brief(res: SearchResult) -> dict:
    return {
        "method": res.method,
        "test_accuracy": res.test_accuracy,
        "val_accuracy": res.val_accuracy,
        "params": res.params,
        "cost": res.cost,
        "space": res.space.to_dict(),
    }


@dataclass
class TaNasResult:
    """The outcome of :func:`ta_nas`: the distances from every baseline, the chosen baseline and space, the FUSE
    result, and the comparison searches (``"random"``: random search in the same space with the same budget;
    ``"general"``: FUSE in the general space with the same settings)."""

    target: str
    distances: dict
    closest: str
    space: SearchSpace
    result: SearchResult
    comparisons: dict
    eps: dict
    cost: dict
    head: dict

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "metric": "ftd",
            "head": self.head,
            "distances": self.distances,
            "closest": self.closest,
            "space": self.space.to_dict(),
            "eps": self.eps,
            "cost": self.cost,
            "result": self.result.to_dict(),
            "comparisons": {k: v.to_dict() for k, v in self.comparisons.items()},
        }

    def summary(self) -> str:
        lines = [
            f"TA-NAS for {self.target} (FTD, shared head width {self.head['width']}; target ε-network test "
            f"accuracy {self.eps['target']['test_accuracy']:.4f})",
            "distances d[baseline → target]:",
        ]
        for n, d in sorted(self.distances.items(), key=lambda kv: kv[1]):
            lines.append(f"  {n:<12} {d:.4f}{'   ← closest' if n == self.closest else ''}")
        lines.append(f"search space: {self.space}")
        rows = [("TA-NAS (FUSE, closest space)", self.result)] + [
            ({"random": "random search, same space & budget", "general": "FUSE, general space"}.get(k, k), v)
            for k, v in self.comparisons.items()
        ]
        lines.append(f"{'method':<36} {'test acc':>8} {'params':>9} {'search s':>9} {'final s':>8} {'cand-ep':>8}")
        for label, r in rows:
            c = r.cost
            lines.append(
                f"{label:<36} {r.test_accuracy:>8.4f} {r.params:>9,} {c['search_s']:>9.1f} "
                f"{c['final_train_s']:>8.1f} {c['candidate_epochs']:>8}"
            )
        lines.append(
            f"cost on {self.cost['device']}: {self.cost['candidates_trained']} candidates trained by TA-NAS, "
            f"peak memory {_mb(self.cost['peak_rss_mb'])} RSS"
            + (f", {_mb(self.cost['peak_cuda_mb'])} CUDA" if self.cost.get("peak_cuda_mb") else "")
        )
        lines.append(f"  {'stage':<16} {'wall s':>8} {'device s':>9} {'peak RSS':>10}")
        for stage, c in self.cost["stages"].items():
            note = " (reused)" if c.get("reused") else ""
            lines.append(f"  {stage:<16} {c['wall_s']:>8.2f} {c['device_s']:>9.2f} {_mb(c['peak_rss_mb']):>10}{note}")
        lines.append("winner:\n" + str(self.result.genotype))
        return "\n".join(lines)

    def save(self, path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")


def _mb(x) -> str:
    return f"{x:,.0f} MB" if x is not None else "n/a"


def ta_nas(
    target: Any,
    dictionary: TaskDictionary | str | Path,
    *,
    compare: Sequence[str] = ("random",),
    fisher_samples: int | None = None,
    random_epochs_per_candidate: int | None = None,
    grow: bool = False,
    data_dir=None,
    device=None,
    out_dir=None,
    progress: bool | None = None,
    **search,
) -> TaNasResult:
    """Algorithm 2 of the papers for ``target`` (a Task or its TaskData) against ``dictionary``.

    1. Train the target's ε-network (the family's architecture, head width and training recipe, seed included).
    2. d[a, b] = FTD(F_ab, F_bb) for every baseline a (Fishers on the target's test split, at most
       ``fisher_samples`` samples), and a* = argmin.
    3. FUSE in a*'s space (``search`` is passed to :func:`fisherx.nas.fuse`: candidates, rounds, batch_size, ...).
    4. ``compare``: ``"random"`` runs random search in the same space with the candidate-epoch budget FUSE used
       (each candidate trained ``random_epochs_per_candidate`` epochs, default alternations × weight_epochs, what a
       FUSE candidate gets in a round that runs all its alternations); ``"general"`` runs FUSE in the general
       space (same skeleton and settings).
    5. ``grow``: add the target to the dictionary with its ε-network, best genotype and derived space.

    ``out_dir`` holds the target ε-network, every search's checkpoints/logs and ``report.json``; rerunning the same
    call resumes. Returns a :class:`TaNasResult` (``summary()`` prints the table). Its ``cost`` has per stage
    (``eps_networks``, ``fishers``, ``distances``, ``search``, ``final_training``) the wall time, device time and
    peak memory (:mod:`fisherx.nas.cost`), the device and the number of candidates FUSE trained; each search result
    (``result``, ``comparisons``) carries its own ``cost`` too.
    """
    from ..distance import distance_column
    from ..fisher import fisher_diag

    unknown = set(compare) - {"random", "general"}
    if unknown:
        raise ValueError(f"unknown comparison(s) {sorted(unknown)}; choose from 'random', 'general'")
    if not isinstance(dictionary, TaskDictionary):
        dictionary = TaskDictionary(dictionary)
    if len(dictionary) == 0:
        raise ValueError(
            f"the dictionary {dictionary.path} has no baseline tasks; add some with add_baseline() "
            "(or fisherx search --baselines ...)"
        )
    data = resolve_data(target, data_dir)
    name = _task_name(target, data)
    dictionary.check_task(data, name)
    record = _task_config(target, data) if grow else None  # refused before any training if it cannot be recorded
    device = pick_device(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    meter = CostMeter(device)
    eps_file = out / "target_eps_network.fx" if out else None
    reused = eps_file is not None and eps_file.is_file()
    # The measuring stages run under the same reproducibility settings as the searches (the ε-network keeps its
    # family's own seed), so a nondeterministic kernel among them is reported too.
    nondet: list = []
    with reproducible(search.get("seed", 0), device, deterministic=search.get("deterministic", True), found=nondet):
        with meter.stage("eps_networks"):
            target_net, target_eps = train_eps_network(
                dictionary, data, device=device, out_file=eps_file, progress=show_progress(progress)
            )
        x_test, y_test = data.test

        def fisher(net):
            return fisher_diag(
                net.eval(),
                (x_test, y_test),
                loss="cross_entropy",
                kind="empirical",
                max_samples=fisher_samples,
                device=device,
                progress=False,
            )

        names = dictionary.names()
        with meter.stage("fishers"):
            f_bb = fisher(target_net)
            f_ab = [fisher(dictionary.eps_network(n, device)) for n in names]
        with meter.stage("distances"):
            col = distance_column(
                f_ab, f_bb, metric="ftd", names=[f"F[{n}→{name}]" for n in names], target_name=f"F[{name}→{name}]"
            )
            distances = {n: float(d) for n, d in zip(names, col.cpu().tolist(), strict=True)}
    closest = min(names, key=lambda n: (distances[n], names.index(n)))
    space = dictionary[closest].space
    note(
        f"TA-NAS: the closest baseline to {name} is {closest} (FTD {distances[closest]:.3f}); searching its space",
        enabled=show_progress(progress),
    )

    sub = (lambda s: out / s) if out is not None else (lambda s: None)
    result = fuse(space, data, device=device, out_dir=sub("fuse"), progress=progress, **search)
    comparisons: dict[str, SearchResult] = {}
    if "random" in compare:
        budget = result.cost["candidate_epochs"]  # equal budget: exactly what FUSE spent
        per = random_epochs_per_candidate or search.get("alternations", 10) * search.get("weight_epochs", 1)
        shared = {
            k: search[k]
            for k in ("batch_size", "lr", "weight_decay", "final_epochs", "seed", "checkpoint_every", "deterministic")
            if k in search
        }
        comparisons["random"] = random_search(
            space,
            data,
            budget=budget,
            epochs_per_candidate=min(per, budget),
            device=device,
            out_dir=sub("random"),
            progress=progress,
            **shared,
        )
    if "general" in compare:
        general = SearchSpace.general(width=space.width, depth=space.depth, stem_multiplier=space.stem_multiplier)
        comparisons["general"] = fuse(general, data, device=device, out_dir=sub("general"), progress=progress, **search)

    eps = {"target": target_eps, "baselines": {n: dictionary[n].eps for n in names}}
    head = {"mode": "shared", "width": dictionary.family["head_width"], "arch": dictionary.family["arch"]}
    # The TA-NAS pipeline's stages: this run's ε-network, Fishers and distances, then the FUSE search and the
    # winner's final training as FUSE measured them (summed over its resumes). The comparisons have their own costs.
    for stage in ("search", "final_training"):
        meter.add(stage, result.cost["stages"][stage])
    stages = meter.to_dict()["stages"]
    stages["eps_networks"]["reused"] = reused  # loaded from an earlier run's file: its training cost is not here
    cost = {
        "stages": stages,
        "device": device_name(device),
        "candidates_trained": result.cost["candidates_trained"],
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "peak_cuda_mb": max(
            (s["peak_cuda_mb"] for s in stages.values() if s["peak_cuda_mb"] is not None), default=None
        ),
        "nondeterministic_ops": sorted(
            set(nondet) | {op for r in (result, *comparisons.values()) for op in r.cost.get("nondeterministic_ops", [])}
        ),
        "eps_s": stages["eps_networks"]["wall_s"],
        "fisher_and_distance_s": stages["fishers"]["wall_s"] + stages["distances"]["wall_s"],
    }
    report = TaNasResult(name, distances, closest, space, result, comparisons, eps, cost, head)
    if out is not None:
        report.save(out / "report.json")
    if grow:
        derived = SearchSpace.from_genotypes(result.genotype, base=space, name=name)
        dictionary.add(
            name,
            task=record,
            eps_network=target_net,
            eps=target_eps,
            space=derived,
            genotype=result.genotype,
            search=_brief(result),
            replace=name in dictionary,
        )
    return report
