"""fisher_diag: the diagonal Fisher of any PyTorch model, from one forward and one backward per batch.

How it works. A probe forward on two samples of the first batch records, under a TorchFunctionMode, which module
call uses each parameter. Every parameter then gets a route:

- ``rule``: used once, inside the module that owns it, and that module type has a rule (:mod:`.rules`);
- ``fallback``: used once, inside one call of a module holding it (itself or an ancestor) with no rule: the
  chunked ``torch.func`` fallback on that module;
- ``tied``: used in several module calls that all hold it (tied weights, a module applied twice): the uses'
  per-sample gradients are summed per sample before squaring. Where every use is a Linear, Conv or Embedding
  (whose rules give their per-sample gradients as factors) this is a closed form with no per-sample gradient in
  memory (:meth:`_Engine._tied_closed_form`); otherwise per-use per-sample gradients, a chunk of the batch at a time;
- ``broadcast``: used only broadcast over the batch in elementwise ops or ``expand`` (a class token, a position
  table added in a forward, a layer scale): the capture expands it to the batch behind a tap, whose gradient row i
  is sample i's (:class:`_BroadcastTaps`);
- ``shared``: owned by a position-wise layer (Linear, Embedding, a norm) called once on an input that is the same
  for every sample, whose output is then only broadcast over the batch (a learned position embedding
  ``pos(arange(T))`` added to the token embeddings): the output's broadcast uses are tapped like a broadcast
  parameter's, and the layer's rule runs on its input repeated for the B samples with those per-sample gradients;
- ``external``: used by code outside any module holding it (e.g. ``h @ self.embed.weight.T`` in a parent's
  forward): per-sample gradients of the whole model by ``torch.func``, chunked (correct, slower).

Each batch then runs one forward with hooks that keep the inputs of the modules concerned and pass their outputs
through a tap (an identity autograd Function). The backward is ``torch.autograd.grad(Σ_i ℓ_i, anchor)`` where
``anchor`` is a dummy tensor that only the taps depend on: autograd then runs every layer's input-gradient
computation but skips the parameter gradients (the weight GEMMs of an ordinary backward), and each tap hands
its layer's output gradient G (row i = ∂ℓ_i/∂y_i, samples being independent) to the layer's rule, which adds
Σ_i (∂ℓ_i/∂θ)² to the accumulator and drops A and G at once.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import SUPPORTED_NODES, tree_flatten, tree_map, tree_unflatten

from .. import _ops
from .._progress import Progress
from . import inputs as _inputs
from .bootstrap import MAX_REPLICATES, poisson_weights
from .result import FisherDiag
from .rules import RULES, Activations, batch_sum, find_rule, hook, supports_weights
from .rules.fallback import chunk_size, fallback_rule, per_sample_grads, warn_external, warn_once

LOSSES = ("cross_entropy", "mse")
KINDS = ("empirical", "mc")
PAIR_BATCH = 256  # batch size when ``data`` is a pair of tensors
_PROBE = 2  # samples of the first batch the probe forward runs on


# ---------------------------------------------------------------------------------------------------------------
# Per-sample losses


def per_sample_loss(loss, out: torch.Tensor, y, batch: int) -> torch.Tensor:
    """(B,) per-sample losses ℓ_i: cross-entropy of the label (summed over extra positions), ½‖f(x_i) − y_i‖²,
    or the caller's function, which must return one value per sample."""
    if loss == "cross_entropy":
        ce = F.cross_entropy(out, y, reduction="none")
        return ce.reshape(batch, -1).sum(1)
    if loss == "mse":
        if out.shape != y.shape:
            raise ValueError(
                f"loss='mse' needs targets shaped like the output {tuple(out.shape)}, got {tuple(y.shape)}"
            )
        return 0.5 * (out - y).square().reshape(batch, -1).sum(1)
    val = loss(out, y)
    if not isinstance(val, torch.Tensor) or val.shape != (batch,):
        shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
        raise ValueError(
            f"the loss function must return one loss per sample, a tensor of shape ({batch},) for this batch, got "
            f"{shape}; use reduction='none' (a mean or sum over the batch is not a per-sample loss)"
        )
    return val


def _sample_labels(loss: str, out: torch.Tensor) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution: ỹ ~ softmax(f(x)) over dim 1, or ỹ ~ N(f(x), I)."""
    out = out.detach()
    if loss == "cross_entropy":
        probs = torch.softmax(out.to(torch.float64), dim=1).movedim(1, -1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1).reshape(probs.shape[:-1])
    return out + torch.randn_like(out)


# ---------------------------------------------------------------------------------------------------------------
# Data


def _batches(data) -> tuple[Iterable, int | None]:
    """(iterator of (x, y), total samples if known). ``data``: a DataLoader, any iterable of (x, y), or (X, Y)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"the input and target tensors have {x.shape[0]} and {y.shape[0]} samples")
        return ((x[s : s + PAIR_BATCH], y[s : s + PAIR_BATCH]) for s in range(0, x.shape[0], PAIR_BATCH)), x.shape[0]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be a DataLoader, an iterable of (x, y) batches, or a pair (X, Y) of tensors; "
            f"got {type(data).__name__}"
        )
    total = None
    ds = getattr(data, "dataset", None)
    if ds is not None and hasattr(ds, "__len__"):
        total = len(ds)
    return data, total


def _batch_size(x) -> int:
    leaves = [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]
    if not leaves:
        raise TypeError(f"a batch's input holds no tensor ({type(x).__name__})")
    return leaves[0].shape[0]


def _map(fn, x):
    """``fn`` applied to every tensor of a batch (tensor, tuple, list, dict, namedtuple, nested); a Mapping type that
    pytree does not know (a tokenizer's batch, say) is taken as a dict, so its tensors are reached too."""
    if isinstance(x, Mapping) and type(x) not in SUPPORTED_NODES:
        x = dict(x)
    return tree_map(lambda t: fn(t) if isinstance(t, torch.Tensor) else t, x)


def move_batch(x, device: torch.device):
    return _map(lambda t: t.to(device, non_blocking=True), x)


def _slice(x, s: slice):
    return _map(lambda t: t[s], x)


def _call(model: nn.Module, x):
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


# ---------------------------------------------------------------------------------------------------------------
# Probe: which module call uses which parameter


# Elementwise ops through which a parameter broadcast over the batch (h + pos_embed, x * scale) gets per-sample
# gradients from a tap on its expansion; in-place ones only with the parameter as the second operand.
_ELEMENTWISE = {
    torch.add,
    torch.sub,
    torch.mul,
    torch.Tensor.add,
    torch.Tensor.sub,
    torch.Tensor.mul,
    torch.Tensor.__add__,
    torch.Tensor.__radd__,
    torch.Tensor.__sub__,
    torch.Tensor.__rsub__,
    torch.Tensor.__mul__,
    torch.Tensor.__rmul__,
}
_INPLACE = {
    torch.Tensor.__iadd__,
    torch.Tensor.__isub__,
    torch.Tensor.__imul__,
    torch.Tensor.add_,
    torch.Tensor.sub_,
    torch.Tensor.mul_,
}


def _broadcast_use(func, args, p: torch.Tensor, out, n: int) -> bool:
    """Whether this use of ``p`` broadcasts it over a batch of ``n`` (dim 0 of ``out``): ``p.expand(n, ...)``, or an
    elementwise op of ``p`` (size 1 or absent in dim 0) with a batched tensor."""
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n or p.dim() > out.dim():
        return False
    if p.dim() == out.dim() and p.shape[0] != 1:
        return False
    if func is torch.Tensor.expand:
        return args[0] is p
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if len(args) < 2 or len(tensors) != 2 or not any(a is p for a in args[:2]):
        return False
    return func in _ELEMENTWISE or (func in _INPLACE and args[1] is p)


class _UseRecorder(TorchFunctionMode):
    def __init__(self, ids: dict[int, str], n: int):
        super().__init__()
        self.ids, self.n = ids, n
        self.stack: list[tuple[nn.Module, int]] = []
        self.parents: dict[tuple[nn.Module | None, int], set] = {}  # module call → the calls it runs inside
        self.uses: dict[str, list[tuple[nn.Module | None, int]]] = {}  # None: outside any module
        self.broadcast: dict[str, bool] = {}  # name → every use so far broadcasts it over the batch
        # A module call's single tensor output, by id (the tensor is held so that its id is not reused), and
        # whether each later use broadcasts it over the batch (absent: never used).
        self.outputs: dict[int, tuple[tuple[nn.Module, int], torch.Tensor]] = {}
        self.out_broadcast: dict[tuple[nn.Module, int], bool] = {}

    def watch(self, site: tuple[nn.Module, int], out) -> None:
        if isinstance(out, torch.Tensor):
            self.outputs[id(out)] = (site, out)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) and not any(isinstance(t, torch.Tensor) for t in tree_flatten(out)[0]):
            # Metadata (p.dtype, p.shape, p.device, p.dim()) and values read off a tensor (p.item(), p.tolist())
            # carry no gradient: not a use (a forward doing x.to(self.fc.weight.dtype) keeps fc's weight on its rule).
            return out
        for a in tree_flatten((args, kwargs))[0]:
            if not isinstance(a, torch.Tensor):
                continue
            made = self.outputs.get(id(a))
            if made is not None and made[1] is a and out is not a:  # x.to(its own device) hands x itself on
                made_by = made[0]
                self.out_broadcast[made_by] = self.out_broadcast.get(made_by, True) and _broadcast_use(
                    func, args, a, out, self.n
                )
            name = self.ids.get(id(a))
            if name is not None:
                site = self.stack[-1] if self.stack else (None, 0)
                lst = self.uses.setdefault(name, [])
                if site not in lst:
                    lst.append(site)
                self.broadcast[name] = self.broadcast.get(name, True) and _broadcast_use(func, args, a, out, self.n)
        return out


def _holds(module: nn.Module | None, p: torch.Tensor) -> str | None:
    """The name of ``p`` inside ``module`` (recursively), or None."""
    if module is None:
        return None
    for n, q in module.named_parameters(remove_duplicate=False):
        if q is p:
            return n
    return None


def _rule_of(found: dict, mod: nn.Module):
    """find_rule(mod), looked up once per module in ``found``."""
    if mod not in found:
        found[mod] = find_rule(mod)
    return found[mod]


def _batch_dims(rule, mod: nn.Module, tensors: list) -> list[int]:
    """The batch dim of each tensor output of ``mod``: 0, unless its ``rule`` says otherwise with a ``batch_dims``
    attribute (an LSTM's h_n is (layers, B, H); a sequence-first layer's output is (T, B, ...))."""
    fn = hook(rule, "batch_dims")
    return list(fn(mod, tensors)) if fn is not None else [0] * len(tensors)


# Layers that act on each position alone: given sequence-first tensors (T, B, ...) as inside a batch_first=False
# Transformer, their rules get the batch moved to dim 0 (inputs and output gradients alike).
POSITIONWISE: tuple[type, ...] = (
    nn.Linear,
    nn.LayerNorm,
    nn.Embedding,
    *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []),
)


def _out_rows(out, mod: nn.Module, rule) -> tuple[list[int], list[int] | None]:
    """Sizes of the tensor outputs along their batch dims, and along dim 1 for a position-wise layer (else None)."""
    ts = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    rows = [t.shape[d] if t.dim() > d else -1 for t, d in zip(ts, _batch_dims(rule, mod, ts), strict=True)]
    seq = [t.shape[1] if t.dim() > 2 else -1 for t in ts] if isinstance(mod, POSITIONWISE) else None
    return rows, seq


def _batched_dim(rows: tuple, n: int) -> int | None:
    if all(r == n for r in rows[0]):
        return 0
    return 1 if rows[1] is not None and all(r == n for r in rows[1]) else None


def _rule_param(mod: nn.Module, rule, p: torch.Tensor, rel: str | None) -> str | None:
    """The name under which ``mod``'s ``rule`` reports ``p``: one of its own parameters, or a descendant's that the
    rule claims through a ``claims(layer) -> names`` attribute (MultiheadAttention uses out_proj.weight itself)."""
    if rule is None:
        return None
    own = next((k for k, q in mod._parameters.items() if q is p), None)
    claims = hook(rule, "claims")
    if own is None and claims is not None and rel in claims(mod):
        return rel
    return own


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def _probe(model: nn.Module, x, rec: _UseRecorder | None, found: dict):
    """Run ``model`` on ``x``; return (calls per module, leading sizes of each call's tensor outputs). ``found``:
    the modules' rules, looked up once (see _rule_of)."""
    counts: dict[nn.Module, int] = {}
    rows: dict[tuple[nn.Module, int], tuple] = {}
    handles = []
    stack = rec.stack if rec is not None else []

    def pre(mod, args):
        c = counts.get(mod, 0)
        counts[mod] = c + 1
        if rec is not None:
            rec.parents[(mod, c)] = set(stack)
        stack.append((mod, c))

    def post(mod, args, out):
        site = stack.pop()
        rows[site] = _out_rows(out, mod, _rule_of(found, mod))
        if rec is not None:
            rec.watch(site, out)

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        # No fused inference fast path (TransformerEncoderLayer's bypasses its self_attn module under no_grad, unlike
        # the forwards with gradients that the probe stands for).
        with torch.no_grad(), _mha_fastpath(False):
            if rec is not None:
                with rec:
                    _call(model, x)
            else:
                _call(model, x)
    finally:
        for h in handles:
            h.remove()
    return counts, rows


class _Plan:
    """Routes of the selected parameters, from a probe forward (two, to tell batched outputs from shared ones)."""

    def __init__(self, model: nn.Module, selected: dict[str, torch.Tensor], x, batch: int):
        ids = {id(p): n for n, p in selected.items()}
        n1 = min(batch, _PROBE)
        rec = _UseRecorder(ids, n1)
        rule_of: dict = {}  # find_rule once per module
        counts, rows = _probe(model, _slice(x, slice(0, n1)), rec, rule_of)
        bcast = dict(rec.broadcast)
        out_bcast = dict(rec.out_broadcast)
        # A module call is batched when the leading size of its outputs follows the batch size: with a second probe
        # on one more sample, a coincidence (a position embedding of length 2, say) cannot pass for a batch dim.
        # The batch dim of each call: 0 (or the dims its rule declares), 1 for a position-wise layer on
        # sequence-first tensors, None when not batched.
        batched = {site: _batched_dim(rs, n1) for site, rs in rows.items()}
        if batch > n1:
            rec2 = _UseRecorder(ids, n1 + 1)
            _, rows2 = _probe(model, _slice(x, slice(0, n1 + 1)), rec2, rule_of)
            bcast = {k: v and rec2.broadcast.get(k, False) for k, v in bcast.items()}
            out_bcast = {k: v and rec2.out_broadcast.get(k, False) for k, v in out_bcast.items()}
            for site, rs in rows2.items():
                d = batched.get(site)
                batched[site] = d if d is not None and _batched_dim(rs, n1 + 1) == d else None
        self.seq_first: set[nn.Module] = set()  # rule-routed position-wise layers called on (T, B, ...)
        self.calls = counts
        self.rule: dict[nn.Module, dict[str, str]] = {}  # module → {local name: full name}
        self.shared: dict[nn.Module, dict[str, str]] = {}  # the same, for the shared calls (see the module doc)
        self.fallback: dict[nn.Module, dict[str, str]] = {}  # module → {relative name: full name}
        self.tied: dict[str, list[tuple[nn.Module, int, str]]] = {}  # full name → [(module, call, relative name)]
        self.external: list[str] = []
        self.unused: list[str] = []
        self.broadcast: list[str] = []
        for name, p in selected.items():
            sites = rec.uses.get(name, [])
            first = sites[0][0] if len(sites) == 1 else None
            own_rule = (
                first is not None and _rule_param(first, _rule_of(rule_of, first), p, _holds(first, p)) is not None
            )
            if bcast.get(name, False) and not own_rule:
                # Used only broadcast over the batch (a position embedding added in a forward, a class token
                # expanded), not by a layer with a rule: per-sample gradients from taps on the expanded parameter
                # (_BroadcastTaps), wherever the use is.
                self.broadcast.append(name)
                continue
            # A use inside a call that itself uses the parameter is already part of that call's vjp: keep the
            # outermost using calls only.
            sites = [st for st in sites if not any(o in rec.parents.get(st, ()) for o in sites if o != st)]
            if not sites:
                self.unused.append(name)
                continue
            dims = [batched.get(site) for site in sites]
            if (
                first is not None
                and own_rule
                and dims == [None]
                and out_bcast.get((first, 0), False)
                and self._shared(first, name, p, rule_of)
            ):
                continue
            self._route(name, p, sites, dims, rule_of)
        for mod in self.fallback:
            warn_once(mod)
        if self.external:
            warn_external(model, self.external)
        # The rule of every hooked module, looked up once here (the capture asks for it at every call).
        self.rules: dict[nn.Module, Callable | None] = {m: _rule_of(rule_of, m) for m in self.hooked()}

    def _shared(self, mod: nn.Module, name: str, p: torch.Tensor, rule_of: dict) -> bool:
        """Route ``p`` of ``mod`` (called once, not batched, its output only broadcast) as a shared call, if
        ``mod`` is position-wise: only then is its rule's result on an input repeated B times that of B samples."""
        if not isinstance(mod, POSITIONWISE) or self.calls[mod] != 1:
            return False
        own = _rule_param(mod, _rule_of(rule_of, mod), p, _holds(mod, p))
        assert own is not None  # the caller checked own_rule
        self.shared.setdefault(mod, {})[own] = name
        return True

    def _route(self, name: str, p: torch.Tensor, sites: list, dims: list, rule_of: dict):
        rel: list = [_holds(m, p) for m, _ in sites]
        mod = sites[0][0]
        single = len(sites) == 1 and mod is not None and self.calls[mod] == 1
        own = _rule_param(mod, _rule_of(rule_of, mod), p, rel[0]) if single and rel[0] is not None else None
        # Outside any module holding it, or in a call whose output is shared by the samples (not batched): the
        # per-sample gradient cannot be read off that call's output gradient. Sequence-first calls (dim 1) are
        # read off by position-wise rules only.
        if any(r is None for r in rel) or None in dims or (1 in dims and own is None):
            self.external.append(name)
        elif own is not None:
            self.rule.setdefault(mod, {})[own] = name
            if dims[0] == 1:
                self.seq_first.add(mod)
        elif single:
            self.fallback.setdefault(mod, {})[rel[0]] = name
        else:
            self.tied[name] = [(m, c, r) for (m, c), r in zip(sites, rel, strict=True)]

    def relabel(self, f: Callable) -> _Plan:
        """A copy with every module ``m`` replaced by ``f(m)``: module names for the plan cache (which must not keep
        the model alive), and the modules again on a cache hit."""
        new = object.__new__(_Plan)
        new.calls = {f(m): c for m, c in self.calls.items()}
        new.rule = {f(m): d for m, d in self.rule.items()}
        new.shared = {f(m): d for m, d in self.shared.items()}
        new.fallback = {f(m): d for m, d in self.fallback.items()}
        new.tied = {n: [(f(m), c, r) for m, c, r in sites] for n, sites in self.tied.items()}
        new.rules = {f(m): r for m, r in self.rules.items()}
        new.seq_first = {f(m) for m in self.seq_first}
        new.external, new.unused, new.broadcast = self.external, self.unused, self.broadcast
        return new

    def hooked(self) -> list[nn.Module]:
        mods = [*self.rule, *self.shared, *self.fallback, *(m for sites in self.tied.values() for m, _, _ in sites)]
        return list(dict.fromkeys(mods))  # each once: a module hooked twice would be captured twice


# The plan of the last call per model, keyed on everything it was derived from (see _plan_key), with module names in
# place of modules so that the cache holds no reference to the model.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _CallsChanged(RuntimeError):
    """A layer ran a different number of times than in the batch the plan was made from."""


def _plan_key(model: nn.Module, selected: dict[str, torch.Tensor], x, batch: int, flags: tuple) -> tuple:
    """What a plan depends on: the module tree (with the modules' ``batch_first`` flags) and parameter objects, the
    registered rules, the selected names, the input's structure, per-sample shapes, dtypes and devices (plain Python
    values in it by value), and the training flags."""
    leaves, spec = tree_flatten(x)
    sig = tuple(
        (tuple(t.shape[1:]) if t.dim() and t.shape[0] == batch else ("whole", tuple(t.shape)), t.dtype, t.device)
        if isinstance(t, torch.Tensor)
        else t
        if isinstance(t, (int, float, str, bool, type(None)))
        else type(t)
        for t in leaves
    )
    # batch_first: the batch dims the attention/recurrent rules declare (and so the routes) follow it.
    mods = tuple(
        (n, id(m), type(m), m.__dict__.get("batch_first")) for n, m in model.named_modules(remove_duplicate=False)
    )
    rules = tuple((t, id(r)) for t, r in RULES.items())  # a rule registered later changes the routes
    params = tuple((n, id(p)) for n, p in model.named_parameters(remove_duplicate=False))
    return mods, params, rules, tuple(selected), str(spec), sig, min(batch, _PROBE + 1), flags


def _plan_for(
    model: nn.Module, selected: dict[str, torch.Tensor], x, batch: int, flags: tuple, fresh: bool = False
) -> tuple[_Plan, bool]:
    """(plan, whether it came from the cache): the cached plan when nothing it depends on changed, else a new probe."""
    key = _plan_key(model, selected, x, batch, flags)
    hit = None if fresh else _PLANS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1].relabel(dict(model.named_modules()).__getitem__), True
    plan = _Plan(model, selected, x, batch)
    names = {m: n for n, m in model.named_modules()}
    _PLANS[model] = (key, plan.relabel(names.__getitem__))
    return plan, False


# ---------------------------------------------------------------------------------------------------------------
# Capture


class _Tap(torch.autograd.Function):
    """Identity on a layer's outputs whose backward hands their gradients to ``handler``.

    ``inplace``: return the outputs themselves (mark_dirty: no copy), allowed when the layer's own backward does
    not save its output (Linear, Conv, norms, Embedding). Otherwise clone, so in-place ops after the layer
    cannot invalidate a tensor the layer saved.
    """

    @staticmethod
    def forward(ctx, anchor, handler, inplace, *outs):
        ctx.handler = handler
        if inplace:
            ctx.mark_dirty(*outs)
            return outs
        return tuple(o.clone() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        ctx.handler(grads)
        return (None, None, None, *grads)


class _Owned(torch.autograd.Function):
    """A layer whose rule also gives the gradients of its inputs (``input_grads`` hook: the recurrent rules, whose
    BPTT computes them anyway): its outputs, cut from the fused kernel's graph, behind one node whose backward
    runs the rule and hands back the input gradients, so autograd never runs that kernel's own backward."""

    @staticmethod
    def forward(ctx, anchor, backward, n_in, *tensors):
        ctx.backward_fn, ctx.n_in = backward, n_in
        ctx.set_materialize_grads(False)  # unused outputs: None, as the rules expect
        return tuple(t.clone() for t in tensors[n_in:])  # clones: later in-place ops must not touch a saved output

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, None, *ctx.backward_fn(grads), *([None] * len(grads)))


def _detach(x):
    return _map(torch.Tensor.detach, x)


_PLAIN = (int, float, bool, str)  # non-tensor output entries that carry no gradient


def _batch_first(x, batch: int):
    """Sequence-first tensors (T, B, ...) of ``x`` as (B, T, ...) views."""
    return _map(lambda t: t.transpose(0, 1) if t.dim() >= 2 and t.shape[1] == batch else t, x)


class _BroadcastTaps(TorchFunctionMode):
    """During the capture forward: each broadcast use of a tensor p (see _broadcast_use) gets p expanded to the
    batch, pe = p.expand(shape), passed through a tap; the tap's gradient row i is ∂ℓ_i/∂pe_i, which summed over the
    broadcast dims is sample i's gradient of p from that use (B × p's size, like the activation it is added to).
    p is a broadcast parameter, or the output of a shared call (:meth:`watch`); each use's rows go to p's list."""

    def __init__(self, engine: _Engine, names: list[str]):
        super().__init__()
        self.engine = engine
        self.ids = {id(engine.acc_param[n]): n for n in names}
        self.outputs: dict[int, tuple[torch.Tensor, list]] = {}  # a shared call's output (held: ids stay unique)

    def watch(self, out: torch.Tensor, sink: list) -> None:
        self.outputs[id(out)] = (out, sink)

    def _sink(self, a) -> list | None:
        if not isinstance(a, torch.Tensor):
            return None
        name = self.ids.get(id(a))
        if name is not None:
            return self.engine.broadcast_grads.setdefault(name, [])
        made = self.outputs.get(id(a))
        return made[1] if made is not None and made[0] is a else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # The plan saw only broadcast uses of these tensors, and calls that hand a shared output on unchanged
        # (x.to(its own device)): those pass through untapped.
        broadcasting = func is torch.Tensor.expand or func in _ELEMENTWISE or func in _INPLACE
        hit = [(i, sink) for i, a in enumerate(args[:2]) if (sink := self._sink(a)) is not None] if broadcasting else []
        if not hit:
            return func(*args, **kwargs)
        i, sink = hit[0]
        p = args[i]
        if func is torch.Tensor.expand:
            return self._tap(p, func(*args, **kwargs), sink)
        shape = torch.broadcast_shapes(*(a.shape for a in args if isinstance(a, torch.Tensor)))
        new = list(args)
        new[i] = self._tap(p, p.expand(shape), sink)
        return func(*new, **kwargs)

    def _tap(self, p: torch.Tensor, pe: torch.Tensor, sink: list) -> torch.Tensor:
        shape = tuple(p.shape)

        def handler(grads):
            g = grads[0]
            lead = (1,) * (g.dim() - len(shape)) + shape  # p aligned right; dim 0 is the batch
            dims = [d for d in range(1, g.dim()) if lead[d] == 1 and g.shape[d] != 1]
            per = g.sum(dims, keepdim=True) if dims else g
            sink.append(per.reshape(g.shape[0], *shape))

        return _Tap.apply(self.engine.anchor, handler, False, pe)[0]


def _repeat(acts: Activations, b: int) -> Activations:
    """A call's inputs as a batch of ``b`` identical samples (expanded views, no copy)."""

    def rep(t):
        return t.expand(b, *t.shape)

    return Activations(_map(rep, tuple(acts)), _map(rep, acts.kwargs))


def _builtin(rule) -> bool:
    """Whether ``rule`` is one of fisherx's, whose results are fresh tensors the accumulator may take over (a user
    rule may keep what it returns)."""
    return getattr(rule, "__module__", "").startswith(__package__ + ".rules")


def _check_versions(mod: nn.Module, versions: list) -> None:
    for t, v in versions:
        if t._version != v:
            raise RuntimeError(
                f"fisher_diag: an input of {type(mod).__name__} was modified in place after the layer ran; its "
                "per-sample gradients cannot be computed"
            )


def _layer_inputs(args: tuple, kwargs: dict) -> tuple[Activations, list]:
    """The layer's detached inputs and their (tensor, version) pairs, to detect in-place changes before the
    backward. Plain tensor arguments (every built-in layer) skip the pytree walk: this runs at every layer call."""
    if not kwargs and all(type(a) is torch.Tensor for a in args):
        det = tuple(a.detach() for a in args)
        return Activations(det), [(t, t._version) for t in det]
    acts = Activations(_detach(tuple(args)), _detach(kwargs))
    return acts, [(t, t._version) for t in tree_flatten((tuple(acts), acts.kwargs))[0] if isinstance(t, torch.Tensor)]


class _Engine:
    def __init__(
        self, model, plan: _Plan, acc: dict, params: dict[str, torch.Tensor], lead: tuple = (), output_fn=None
    ):
        self.model, self.plan, self.acc, self.acc_param = model, plan, acc, params
        self.output_fn = output_fn  # selects the logits from the model's output (fisherx.fisher.inputs)
        self.lead = lead  # (1 + R,) with bootstrap replicates
        self.cached_plan = False  # the plan came from the cache and has not run a batch yet
        self.scale = 1.0
        # Bootstrap: (1 + R, B) weights of the current batch, row 0 all ones (the Fisher itself), rows 1..R the
        # Poisson counts; every accumulator then has a leading dim 1 + R. None without bootstrap.
        self.weights: torch.Tensor | None = None
        self.anchor: torch.Tensor | None = None  # the scalar every tap hangs on, during a batch
        self.batch = 0  # the current batch's size
        self.capturing = False
        self.calls: dict[nn.Module, int] = {}
        self.tied_uses: dict[tuple[nn.Module, int], tuple] = {}
        self.broadcast_grads: dict[str, list[torch.Tensor]] = {}  # name → per-sample gradients of each use
        # A shared call's (inputs, per-sample gradients of its output's uses), during a batch.
        self.shared_calls: dict[nn.Module, tuple[Activations, list[tuple[torch.Tensor, int]], list]] = {}
        self.taps = _BroadcastTaps(self, plan.broadcast) if plan.broadcast or plan.shared else None
        self.handles = []
        for m in plan.hooked():
            self.handles.append(m.register_forward_hook(self._forward_hook, with_kwargs=True))

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _forward_hook(self, mod, args, kwargs, out):
        if not self.capturing:  # any other forward (fallback vjp, external path, the caller's own): leave it alone
            return None
        call = self.calls.get(mod, 0)
        self.calls[mod] = call + 1
        single = isinstance(out, torch.Tensor)
        if mod in self.plan.shared:
            self._watch_shared(mod, args, kwargs, out)
            return None
        # Outputs may nest (an LSTM returns (output, (h_n, c_n))) and hold None (attention weights not asked for).
        outs, spec = ([out], None) if single else tree_flatten(out)
        if not single and not all(o is None or isinstance(o, (torch.Tensor, *_PLAIN)) for o in outs):
            raise TypeError(
                f"fisher_diag: {type(mod).__name__} returns {type(out).__name__}; only modules returning "
                "tensors or (nested) tuples of tensors, None and Python scalars can be captured"
            )
        tensors = [i for i, o in enumerate(outs) if isinstance(o, torch.Tensor)]
        pos = [i for i in tensors if outs[i].requires_grad]
        if not pos:
            return None
        rule = self.plan.rules.get(mod)
        seq = mod in self.plan.seq_first
        dims = dict(
            zip(tensors, [1] * len(tensors) if seq else _batch_dims(rule, mod, [outs[i] for i in tensors]), strict=True)
        )
        if any(outs[i].dim() <= dims[i] or outs[i].shape[dims[i]] != self.batch for i in pos):
            raise RuntimeError(
                f"fisher_diag: {type(mod).__name__} returned shapes "
                f"{[tuple(outs[i].shape) for i in pos]} for a batch of {self.batch}; its outputs "
                f"must have the batch as dim {[dims[i] for i in pos]} (they did in the first batch)"
            )
        acts, versions = _layer_inputs(args, kwargs)
        owner = hook(rule, "input_grads")
        if owner is not None and self._owns(mod, call, owner):
            return self._owned(mod, owner, (args, kwargs), acts, versions, outs, spec, pos)
        if seq:  # the rule sees batch-first views
            acts = Activations(_batch_first(tuple(acts), self.batch), _batch_first(acts.kwargs, self.batch))
        n_out = len(outs)

        def handler(grads):
            full = [None] * n_out
            for i, g in zip(pos, grads, strict=True):
                full[i] = g.transpose(0, 1) if seq else g
            _check_versions(mod, versions)
            self._on_backward(mod, call, acts, full[0] if single else tree_unflatten(full, _spec(spec)))

        # A view cannot be marked dirty without autograd routing its gradient around the tap (Linear on (B, T, in)
        # returns a view of a 2-D product), so views are cloned.
        inplace = single and rule is not None and out._base is None
        tapped = _Tap.apply(self.anchor, handler, inplace, *[outs[i] for i in pos])
        if single:
            return tapped[0]
        new = list(outs)
        for i, t in zip(pos, tapped, strict=True):
            new[i] = t
        return tree_unflatten(new, _spec(spec))

    def _watch_shared(self, mod: nn.Module, args, kwargs, out) -> None:
        """A shared call, the same for every sample: its output's broadcast uses are tapped (finish_broadcast)."""
        if isinstance(out, torch.Tensor) and out.requires_grad and self.taps is not None:
            acts, versions = _layer_inputs(args, kwargs)
            sink: list = []
            self.shared_calls[mod] = (acts, versions, sink)
            self.taps.watch(out, sink)

    def _owns(self, mod: nn.Module, call: int, owner) -> bool:
        """Whether ``mod``'s rule covers this call alone (no fallback, not a tied use), so that its ``input_grads``
        hook may take the place of autograd's backward through the layer."""
        if mod not in self.plan.rule or mod in self.plan.fallback or mod in self.plan.seq_first:
            return False
        if any((mod, call) == (m, c) for sites in self.plan.tied.values() for m, c, _ in sites):
            return False
        return self.weights is None or supports_weights(owner)

    def _owned(self, mod: nn.Module, owner, inputs: tuple, acts, versions: list, outs: list, spec, pos: list):
        """The layer's outputs behind an :class:`_Owned` node (see there)."""
        ins = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
        need = [i for i, t in enumerate(ins) if t.requires_grad]
        n_out, names = len(outs), self.plan.rule[mod]

        def backward(grads):
            full: list = [None] * n_out
            for i, g in zip(pos, grads, strict=True):
                full[i] = g
            _check_versions(mod, versions)
            g = full[0] if spec is None else tree_unflatten(full, spec)
            res, in_grads = owner(mod, acts, g) if self.weights is None else owner(mod, acts, g, weights=self.weights)
            own = _builtin(owner)
            for local, full_name in names.items():
                self._add(full_name, res[local], own)
            return [in_grads[i] for i in need]

        new = list(outs)
        owned = _Owned.apply(
            self.anchor, backward, len(need), *[ins[i] for i in need], *[outs[i].detach() for i in pos]
        )
        for i, t in zip(pos, owned, strict=True):
            new[i] = t
        return new[0] if spec is None else tree_unflatten(new, spec)

    def _add(self, name: str, value: torch.Tensor, own: bool = True):
        """acc[name] += scale·value. An accumulator starts as None and, when ``own`` (``value`` is a fresh tensor
        nobody else holds: every built-in rule's result), simply takes the first value: no zero-filled buffer and no
        pass over it, which is most of the engine's own cost on small batches."""
        cur = self.acc[name]
        if cur is None:
            p = self.acc_param[name]
            if own and value.dtype == p.dtype and value.shape == (*self.lead, *p.shape) and value.is_contiguous():
                self.acc[name] = value if self.scale == 1.0 else value.mul_(self.scale)
                return
            cur = self.acc[name] = torch.zeros(*self.lead, *p.shape, dtype=p.dtype, device=p.device)
        cur.add_(value.to(cur.dtype), alpha=self.scale)

    def _apply_rule(self, mod: nn.Module, names: dict[str, str], acts, g) -> None:
        """Add the result of ``mod``'s rule on (``acts``, ``g``) to the accumulators of ``names`` (local → full)."""
        rule = self.plan.rules[mod]
        assert rule is not None  # plan.rule and plan.shared name only modules that have one
        if self.weights is None:
            res = rule(mod, acts, g)
        elif supports_weights(rule):
            res = rule(mod, acts, g, weights=self.weights)
        else:  # a user rule without bootstrap support: its parameters' replicates come from the fallback
            res = fallback_rule(
                mod, acts, g, {loc: self.acc_param[full] for loc, full in names.items()}, weights=self.weights
            )
        own = _builtin(rule)
        for local, full in names.items():
            self._add(full, res[local], own)

    def _on_backward(self, mod, call, acts, g):
        names = self.plan.rule.get(mod)
        if names:
            self._apply_rule(mod, names, acts, g)
        names = self.plan.fallback.get(mod)
        if names:
            res = fallback_rule(
                mod, acts, g, {rel: self.acc_param[full] for rel, full in names.items()}, weights=self.weights
            )
            for rel, full in names.items():
                self._add(full, res[rel])
        if any((mod, call) == (m, c) for sites in self.plan.tied.values() for m, c, _ in sites):
            self.tied_uses[(mod, call)] = (acts, g)

    def finish_broadcast(self):
        """Σ_i (Σ_uses ∂ℓ_i/∂p|_use)² for the parameters broadcast over the batch, from the taps' per-sample rows."""
        # The taps append to these lists, made in the forward, at every backward: with several label draws per
        # batch (kind="mc") each draw's rows are used, then the list is emptied in place for the next draw.
        for name, per in self.broadcast_grads.items():
            if not per:  # no use reached the loss
                continue
            tot = per[0] if len(per) == 1 else torch.stack(per).sum(0)
            per.clear()
            self._add(name, batch_sum(tot.square(), self.weights))
        for mod, (acts, versions, per) in self.shared_calls.items():
            if not per:
                continue
            _check_versions(mod, versions)
            g = per[0] if len(per) == 1 else torch.stack(per).sum(0)
            per.clear()
            # The call's input, the same for every sample, as a batch of B: a position-wise rule then gives
            # Σ_i (∂ℓ_i/∂θ)² from the per-sample output gradients g.
            self._apply_rule(mod, self.plan.shared[mod], _repeat(acts, g.shape[0]), g)

    def finish_tied(self, batch: int):
        """Σ_i (Σ_uses ∂ℓ_i/∂θ|_use)² for every tied parameter: in closed form where every use's layer gives its
        per-sample gradient as factors (:func:`_tied_closed_form`), else from per-sample gradients, a chunk of
        samples at a time."""
        for full, sites in self.plan.tied.items():
            uses = [(m, rel, *self.tied_uses[(m, c)]) for m, c, rel in sites if (m, c) in self.tied_uses]
            if not uses:  # no use reached the loss: no gradient
                continue
            if self._tied_closed_form(full, uses, batch):
                continue
            p = self.acc_param[full]
            step = chunk_size({full: p})
            for s in range(0, batch, step):
                e = min(batch, s + step)
                tot = torch.zeros((e - s, *p.shape), dtype=p.dtype, device=p.device)
                for m, rel, acts, g in uses:
                    tot += per_sample_grads(m, acts, g, {rel: p}, s, e)[rel]
                self._add(full, batch_sum(tot.square(), None if self.weights is None else self.weights[:, s:e]))
        self.tied_uses.clear()

    def _tied_closed_form(self, full: str, uses: list, batch: int) -> bool:
        """Accumulate Σ_i (Σ_u ∂ℓ_i/∂θ|_u)² with no per-sample gradient in memory, when every use's rule gives
        ``factors`` (the rules of Linear, Conv and Embedding do); False (nothing added) otherwise.

        Dense uses ∂ℓ_i/∂θ|_u = Σ_t G_uit A_uitᵀ concatenate along t: Σ_i (Σ_u Σ_t G A)² is one squared-GEMM sum
        (:func:`fisherx._ops.sqgrad_gemm`), or for 2-D inputs Σ_{u,v} (G_u∘G_v)ᵀ(A_u∘A_v) as plain GEMMs. Sparse
        uses (Embedding rows S_i at the tokens of sample i) add Σ_i Σ_{v ∈ sample i} (2 D_iv∘S_iv + S_iv²) with
        D_iv the dense per-sample gradient's row v, read off at those rows only. Biases: Σ_i (Σ_u s_ui)²."""
        rule_of = self.plan.rules
        if any(hook(rule_of.get(m), "factors") is None for m, *_ in uses):
            return False
        p = self.acc_param[full]
        per_sample = sum(
            (g.numel() + acts[0].numel() * math.prod(getattr(m, "kernel_size", (1,)))) // batch
            for m, _, acts, g in uses
        )
        step = max(1, chunk_size({full: p}) * p.numel() // max(1, per_sample))
        for s in range(0, batch, step):
            sl = slice(s, min(batch, s + step))
            fs = [_factors(rule_of[m])(m, acts[0][sl], g[sl], rel) for m, rel, acts, g in uses]
            w = None if self.weights is None else self.weights[:, sl]
            value = _combine_factors(fs, w)
            if value is None:
                if s:  # pragma: no cover - the factors' kinds depend on the layers only, not on the chunk
                    raise RuntimeError(f"fisher_diag: tied closed form of {full} failed after the first chunk")
                return False
            self._add(full, value.reshape(*w.shape[:1] if w is not None else (), *p.shape))
        return True


def _combine_factors(fs: list, weights: torch.Tensor | None) -> torch.Tensor | None:
    """Σ_i w_i·(Σ_u ∂ℓ_i/∂θ|_u)² from the uses' factors (see _Engine._tied_closed_form); None when they do not
    combine (unknown layer, mixed kinds or shapes)."""
    if any(f is None for f in fs):
        return None
    kinds = {f[0] for f in fs}
    if kinds == {"sum"}:
        tot = fs[0][1]
        for f in fs[1:]:
            tot = tot + f[1]
        return batch_sum(tot.square(), weights)
    if "sum" in kinds:
        return None
    dense = [f for f in fs if f[0] == "outer"]
    sparse = [f for f in fs if f[0] == "rows"]
    if len({(f[1].shape[1], f[1].shape[3], f[2].shape[3]) for f in dense}) > 1:
        return None
    out = None
    if dense:
        if weights is None and len(dense) <= 3 and all(f[1].shape[1:3] == (1, 1) for f in dense):
            gs, as_ = [f[1][:, 0, 0] for f in dense], [f[2][:, 0, 0] for f in dense]
            for u in range(len(dense)):
                for v in range(u, len(dense)):
                    t = (gs[u] * gs[v]).t() @ (as_[u] * as_[v])
                    out = t if out is None else out.add_(t, alpha=1.0 if u == v else 2.0)
            assert out is not None  # dense holds at least one use
            out = out[None]
        else:
            cat_g = torch.cat([f[1] for f in dense], dim=2) if len(dense) > 1 else dense[0][1]
            cat_a = torch.cat([f[2] for f in dense], dim=2) if len(dense) > 1 else dense[0][2]
            out = _ops.sqgrad_gemm(cat_g, cat_a, weights)
    if not sparse:
        return out
    sq = _sparse_part(dense, sparse, weights)
    if sq is None:
        return None
    return sq if out is None else out.reshape(sq.shape).add_(sq)


def _sparse_part(dense: list, sparse: list, weights: torch.Tensor | None) -> torch.Tensor | None:
    """Σ_i w_i Σ_{v ∈ sample i} (2 D_iv∘S_iv + S_iv²) for the Embedding uses' rows S (summed over those uses) and the
    dense uses' per-sample gradient D at the same rows; None when the shapes do not match."""
    v, d = sparse[0][3], sparse[0][2].shape[1]
    if any(f[3] != v or f[2].shape[1] != d for f in sparse) or (
        dense and (dense[0][1].shape[1] != 1 or dense[0][1].shape[3] != v or dense[0][2].shape[3] != d)
    ):
        return None
    key, inv = torch.unique(torch.cat([f[1] for f in sparse]), return_inverse=True)
    rows = torch.zeros(key.numel(), d, dtype=sparse[0][2].dtype, device=key.device)
    rows.index_add_(0, inv, torch.cat([f[2] for f in sparse]))
    contrib = rows.square()
    if dense:
        contrib.add_(_dense_rows(dense, key, v).mul_(rows), alpha=2.0)
    from .rules.embedding import scatter_rows

    return scatter_rows(contrib, key, v, weights)


def _dense_rows(dense: list, key: torch.Tensor, v: int) -> torch.Tensor:
    """Row (key mod v) of sample (key div v)'s dense per-sample gradient Σ_u Σ_t G_uit[v]·A_uit, per key (sorted):
    the keys of one sample are gathered into a padded (B, keys per sample, T) matrix, one bmm per use."""
    n = dense[0][1].shape[0]
    smp, tok = key // v, key % v
    counts = torch.bincount(smp, minlength=n)
    rank = torch.arange(key.numel(), device=key.device) - (torch.cumsum(counts, 0) - counts)[smp]
    width = int(counts.max()) if key.numel() else 0
    d = None
    for _, g, a in dense:
        g3, a3 = g[:, 0], a[:, 0]  # (n, T, V), (n, T, K)
        sel = torch.zeros(n, width, g3.shape[1], dtype=g3.dtype, device=g3.device)
        sel[smp, rank] = g3.transpose(1, 2)[smp, tok]
        part = torch.bmm(sel, a3)[smp, rank]
        d = part if d is None else d.add_(part)
    assert d is not None, "no dense use"
    return d


def _external(model, names: list[str], acc_param, x, y, loss, batch: int, engine: _Engine):
    """Whole-model per-sample gradients (torch.func) for parameters used outside the modules holding them."""
    from torch.func import functional_call, grad, vmap

    params = {n: acc_param[n].detach() for n in names}

    def loss_one(p, xi, yi):
        out = _inputs.select_output(_call_functional(model, p, _unsq(xi), functional_call), engine.output_fn)
        return per_sample_loss(loss, out, _unsq(yi), 1).sum()

    per = vmap(grad(loss_one), in_dims=(None, 0, 0))
    step = chunk_size(params)
    for s in range(0, batch, step):
        sl = slice(s, min(batch, s + step))
        gs = per(params, _slice(x, sl), _slice(y, sl))
        w = None if engine.weights is None else engine.weights[:, sl]
        for n in names:
            engine._add(n, batch_sum(gs[n].square(), w))


def _unsq(x):
    return _map(lambda t: t.unsqueeze(0), x)


def _call_functional(model, params, x, functional_call):
    if isinstance(x, Mapping):
        return functional_call(model, params, (), x, strict=False)
    if isinstance(x, (tuple, list)):
        return functional_call(model, params, tuple(x), strict=False)
    return functional_call(model, params, (x,), strict=False)


# ---------------------------------------------------------------------------------------------------------------
# The public function


def select_params(model: nn.Module, params) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    if params is None:
        chosen = list(named)
    elif callable(params):
        chosen = [n for n in named if params(n)]
    else:
        if isinstance(params, str):
            params = [params]
        chosen = list(params)
        unknown = [n for n in chosen if n not in named]
        if unknown:
            raise ValueError(
                f"params names parameters the model does not have: {', '.join(unknown[:5])}"
                f"{' ...' if len(unknown) > 5 else ''}"
            )
        chosen = [n for n in named if n in set(chosen)]  # model order
    sel: dict[str, torch.Tensor] = {n: named[n] for n in chosen if named[n].requires_grad}
    if not sel:
        raise ValueError(
            "the model has no trainable parameters to compute a Fisher for"
            + ("" if params is None else " among those selected by params")
            + " (all have requires_grad=False or none exist)"
        )
    return sel


def model_device(model: nn.Module, device) -> torch.device:
    devs = {t.device for t in list(model.parameters()) + list(model.buffers())}
    if len(devs) > 1:
        raise ValueError(
            "the model's parameters and buffers are on several devices "
            f"({', '.join(sorted(str(d) for d in devs))}); fisher_diag needs them on one device"
        )
    dev = devs.pop() if devs else torch.device("cpu")
    if device is not None and torch.device(device) != dev:
        want = torch.device(device)
        if not (want.type == dev.type and want.index is None):
            raise ValueError(f"device={want} but the model is on {dev}; move the model first (model.to(device))")
    return dev


def _check_norms(model: nn.Module) -> bool:
    """Refuse BatchNorm without running statistics; say whether any BatchNorm was in training mode."""
    was_training = False
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None:
                raise ValueError(
                    f"{name or 'model'} ({type(m).__name__}) has track_running_stats=False, so it normalises with "
                    "batch statistics even in eval mode; that couples the samples and per-sample gradients are "
                    "undefined. Use running statistics, GroupNorm or LayerNorm."
                )
            was_training |= m.training
    return was_training


def fisher_diag(
    model: nn.Module,
    data,
    *,
    loss: str | Callable = "cross_entropy",
    kind: str = "empirical",
    mc_samples: int = 1,
    max_samples: int | None = None,
    params=None,
    device=None,
    progress: bool = True,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    distributed: bool | None = None,
    output_fn=None,
    label_key: str | None = None,
    batch_fn: Callable | None = None,
    batch_size: int | None = None,
) -> FisherDiag:
    """Diagonal Fisher information F_j = (1/N) Σ_i (∂ℓ_i/∂θ_j)² of ``model`` over the N samples of ``data``.

    ℓ_i is the per-sample loss: ``"cross_entropy"`` (the label's negative log-likelihood, logits (B, C, ...)),
    ``"mse"`` (½‖f(x_i) − y_i‖²), or a callable ``loss(output, target) -> (B,)``. With ``kind="mc"`` the labels are
    drawn from the model's predictive distribution (softmax, or N(f(x), I) for mse), ``mc_samples`` draws per
    input, each squared separately: F_j = (1/N) Σ_i (1/k) Σ_d (∂ℓ(x_i, ỹ_id)/∂θ_j)².
    ``kind="minibatch_authors"``: the FTD authors' code's estimator instead, squared gradients of mean losses
    over mini-batches of 10, each parameter's first axis averaged out (:mod:`fisherx.fisher.minibatch`).

    ``data``: a DataLoader, any iterable of (x, y) batches (x a tensor, tuple or dict of tensors), or a pair
    (X, Y) of tensors (taken in batches of 256). ``params``: names, or a predicate on names; parameters with
    ``requires_grad=False`` are left out. ``device``: must match the model's (batches are moved there).

    The model runs in eval mode (its training flags are restored afterwards): per-sample gradients are undefined
    when BatchNorm uses batch statistics, so a model in training mode with BatchNorm is switched with a warning,
    and BatchNorm with ``track_running_stats=False`` is refused.

    ``bootstrap=R`` (> 0) also accumulates R bootstrap replicates in the same pass (no pass per replicate):
    F_r = Σ_i w_ri·(∂ℓ_i/∂θ)² / Σ_i w_ri with w_ri ~ Poisson(1) a function of (``bootstrap_seed``, the sample's
    index in ``data``, r) only (:mod:`fisherx.fisher.bootstrap`), so they do not depend on batching, and Fishers
    computed with the same seed on the same data are resampled alike (a paired bootstrap of their distance).
    They are in ``result.replicates`` (R × the parameters' memory; see docs/fisher.md for each layer's bound).
    Under torch.distributed the rank is mixed into the seed (the shards' sample indices restart at 0).

    The probe's routes are cached per model and reused while the module tree, the parameter objects, the selection,
    the input's structure and per-sample shapes/dtypes/devices and the training flags stay the same, so a loop of
    small calls probes once; a forward that then runs its layers a different number of times is probed again.

    ``distributed``: ``None`` (default) combines the ranks' shards when a process group of several ranks is
    initialised (every rank must call with its shard); ``False`` keeps this rank's Fisher of its own data, for
    callers that hand different models or tasks to different ranks (as :func:`fisherx.task_distances` does).

    Inputs (:mod:`fisherx.fisher.inputs`): ``data`` may also be a map-style Dataset (batched in order,
    ``batch_size`` per batch, default 256), numpy arrays, or batches that are dicts (the targets under
    ``label_key``, default "labels"; the rest are keyword inputs, ``model(**inputs)``); ``batch_fn(batch) ->
    (inputs, targets)`` splits any other batch. ``output_fn`` selects the logits from a tuple / dict / output
    object (a function, key, attribute name or index; ``.logits`` is taken by default). A ``torch.compile``d model
    is unwrapped to its original module, with a warning.
    """
    model = _inputs.unwrap_compiled(model)
    if kind == "minibatch_authors":  # the FTD authors' code's estimator (fisherx.fisher.minibatch), batch 10
        from .minibatch import fisher_minibatch

        return fisher_minibatch(
            model,
            data,
            loss=loss,
            max_samples=max_samples,
            params=params,
            device=device,
            bootstrap=bootstrap,
            bootstrap_seed=bootstrap_seed,
        )
    _check_arguments(model, loss, kind, mc_samples, max_samples, bootstrap, bootstrap_seed)

    selected = select_params(model, params)
    _check_model(model, selected)
    dev = model_device(model, device)
    data, hint = _inputs.prepare(
        data, label_key=label_key, batch_fn=batch_fn, batch_size=batch_size, pair_batch=PAIR_BATCH
    )
    batches, total = _batches(data)
    total = _expected_total(total, hint, max_samples)
    draws = mc_samples if kind == "mc" else 1

    from .. import distributed as fxd

    combine = fxd.is_distributed() if distributed is None else bool(distributed) and fxd.is_distributed()
    flags = _to_eval(model)
    training = tuple(flags.values())
    lead = (1 + bootstrap,) if bootstrap else ()  # row 0: the Fisher; rows 1..R: the replicates' weighted sums
    acc: dict = dict.fromkeys(selected)  # filled by the engine (_Engine._add); None: nothing added yet
    wsum = torch.zeros(bootstrap, dtype=torch.float64)  # Σ_i w_ri per replicate
    # Under torch.distributed the shards' sample indices restart at 0: the rank is mixed into the seed.
    seed = bootstrap_seed + (fxd.rank_and_world()[0] << 40) if bootstrap and combine else bootstrap_seed
    engine = None
    n_seen = 0
    n_used = 0  # N: samples with a label the loss does not ignore (n_seen also counts the ignored ones)
    bar = _progress(total, progress)
    try:
        for k, batch in enumerate(batches):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError(f"batch {k} is not an (x, y) pair (got {type(batch).__name__})")
            x, y, b = _trimmed(batch, max_samples, n_seen)
            if b == 0:
                continue
            x, y = move_batch(x, dev), move_batch(y, dev)
            used = _used_samples(loss, kind, y, b, k, n_seen)
            if engine is None:
                engine = _new_engine(model, selected, acc, lead, training, x, b, output_fn)
            if bootstrap:
                w = poisson_weights(seed, n_seen, b, bootstrap)
                dt = next(iter(selected.values())).dtype
                engine.weights = torch.cat([torch.ones(1, b, dtype=torch.float64), w]).to(device=dev, dtype=dt)
            engine = _run_checked(engine, model, selected, acc, lead, training, x, y, b, k, n_seen, loss, kind, draws)
            if bootstrap:
                wsum += w.sum(1) if used is None else (w * used.cpu()).sum(1)
            n_seen += b
            n_used += b if used is None else int(used.sum())
            bar.update(b)
            if max_samples is not None and n_seen >= max_samples:
                break
    finally:
        bar.close()
        if engine is not None:
            engine.close()
        _restore_flags(flags)
    _fill_unused(acc, selected, lead)
    if combine:
        acc, n_used, wsum = _combine_ranks(acc, n_used, wsum, bootstrap)
    if n_used == 0:
        raise ValueError("data is empty: fisher_diag saw no samples")
    _check_finite(acc)
    return _result(acc, selected, n_used, wsum, model, loss, kind, mc_samples, bootstrap, bootstrap_seed, dev)


def _combine_ranks(acc: dict, n_used: int, wsum: torch.Tensor, bootstrap: int):
    """Under torch.distributed: every rank's accumulators and counts combined, so each rank ends with the
    Fisher of all the ranks' samples."""
    from .. import distributed as fxd

    # Each rank saw its own shard: F = Σ_r n_r·F_r / Σ_r n_r, so every rank ends with the Fisher of all samples.
    # (The replicates' weighted sums and weight totals simply add up over the shards.)
    names = list(acc)
    means, n_used = fxd.weighted_mean([acc[n] / max(n_used, 1) for n in names], n_used)
    acc = {n: m * n_used for n, m in zip(names, means, strict=True)}
    if bootstrap:
        (wsum,) = fxd.all_reduce_sum([wsum])
    return acc, n_used, wsum


def _expected_total(total: int | None, hint: int | None, max_samples: int | None) -> int | None:
    """The number of samples the progress bar expects (None: unknown)."""
    total = total if total is not None else hint
    if max_samples is not None:
        return min(total, max_samples) if total is not None else max_samples
    return total


def _check_arguments(model, loss, kind: str, mc_samples, max_samples, bootstrap, bootstrap_seed) -> None:
    """fisher_diag's argument checks, each naming the argument, before any work."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or 'minibatch_authors', got {kind!r}")
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
    if kind == "mc" and callable(loss):
        raise ValueError(
            "kind='mc' needs a predictive distribution to draw labels from: use loss='cross_entropy' or 'mse'"
        )
    if not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive int, got {mc_samples!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or not 0 <= bootstrap <= MAX_REPLICATES:
        raise ValueError(f"bootstrap must be an int replicate count in [0, {MAX_REPLICATES}], got {bootstrap!r}")
    if isinstance(bootstrap_seed, bool) or not isinstance(bootstrap_seed, int):
        raise TypeError(f"bootstrap_seed must be an int, got {type(bootstrap_seed).__name__}")


def _check_model(model: nn.Module, selected: dict) -> None:
    """Refuse parameters fisher_diag cannot square safely; warn when BatchNorm must be switched to eval mode."""
    bad = sorted({str(p.dtype) for p in selected.values() if p.dtype not in (torch.float32, torch.float64)})
    if bad:
        raise TypeError(
            f"fisher_diag supports float32 and float64 parameters, the model has {', '.join(bad)}; "
            "convert it with model.float() (the squared gradients would under/overflow in 16 bits)"
        )
    if _check_norms(model):  # some BatchNorm in training mode (the model's own flag may say eval)
        import warnings

        warnings.warn(
            "fisher_diag: the model is in training mode and has BatchNorm, which would couple the samples "
            "through batch statistics; computing the Fisher in eval mode (running statistics). Call "
            "model.eval() to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )


def _trimmed(batch, max_samples: int | None, n_seen: int):
    """(x, y, b) of an (x, y) batch, cut to what ``max_samples`` still allows after ``n_seen`` samples."""
    x, y = batch
    b = _batch_size(x)
    if max_samples is not None and n_seen + b > max_samples:
        b = max_samples - n_seen
        x, y = _slice(x, slice(0, b)), _slice(y, slice(0, b))
    return x, y, b


def _result(acc, selected, n_used: int, wsum, model, loss, kind, mc_samples, bootstrap, bootstrap_seed, dev):
    """The FisherDiag of the accumulated squares: divided by N, with its metadata and, with bootstrap, the
    replicates divided by their weight totals."""
    meta = {
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "n_params": int(sum(p.numel() for p in selected.values())),
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__),
        "kind": kind,
        "dtype": str(next(iter(selected.values())).dtype).replace("torch.", ""),
    }
    if kind == "mc":
        meta["mc_samples"] = mc_samples
    if not bootstrap:
        return FisherDiag({n: a.div_(n_used) for n, a in acc.items()}, n_used, meta)
    if bool((wsum == 0).any()):
        r = int((wsum == 0).nonzero()[0, 0])
        raise ValueError(
            f"bootstrap replicate {r} drew weight 0 for all {n_used} samples (probability e^-N): too few "
            "samples for a bootstrap; pass more data or a different bootstrap_seed"
        )
    meta["bootstrap"] = {"replicates": bootstrap, "seed": bootstrap_seed, "weights": "poisson"}
    scale = (1.0 / wsum).to(device=dev)
    reps = {n: a[1:] * scale.reshape(-1, *[1] * (a.dim() - 1)).to(a.dtype) for n, a in acc.items()}
    return FisherDiag(
        {n: a[0].div_(n_used) for n, a in acc.items()}, n_used, meta, replicates=reps, replicate_weights=wsum
    )


def _used_samples(loss, kind: str, y, b: int, k: int, start: int) -> torch.Tensor | None:
    """(B,) bool: samples with at least one label the loss does not ignore (cross-entropy's ignore_index -100, or
    a loss object's ``ignore_index``); None when every sample counts. An ignored sample has zero gradient, so it
    must not count in N either. A batch with every label ignored is refused."""
    ignore = -100 if loss == "cross_entropy" else getattr(loss, "ignore_index", None)
    if kind != "empirical" or ignore is None or not isinstance(y, torch.Tensor) or y.is_floating_point():
        return None
    used = (y != ignore).reshape(b, -1).any(1)
    if not bool(used.any()):
        raise ValueError(
            f"batch {k} (samples {start}..{start + b - 1}): every label is the ignore_index {ignore}, "
            "so no sample has a gradient; drop the batch or fix its labels"
        )
    return None if bool(used.all()) else used


def _check_finite(acc: dict[str, torch.Tensor]) -> None:
    # Finite per-sample losses can still overflow in the squared gradients (float32 beyond ~1.8e19). A sum with a
    # NaN or Inf term is never finite, so one plain sum per tensor (a read pass, ~30x cheaper than isfinite().all(),
    # which writes a mask) clears the common case; only a non-finite sum (or one that overflowed) is looked at
    # entry by entry.
    if not acc:
        return
    dev = next(iter(acc.values())).device
    sums = torch.stack([a.sum().to(device=dev, dtype=torch.float64) for a in acc.values()])
    if bool(torch.isfinite(sums).all()):
        return
    for n, a in acc.items():
        if not bool(torch.isfinite(a).all()):
            raise ValueError(
                f"the Fisher of parameter {n!r} is not finite (NaN or Inf): the squared per-sample "
                "gradients overflowed; compute it in float64 (model.double()) or rescale the model"
            )


def _to_eval(model: nn.Module) -> dict:
    """Switch ``model`` to eval mode; return every module's training flag as it was."""
    flags = {m: m.training for m in model.modules()}
    if any(flags.values()):
        model.eval()
    return flags


def _restore_flags(flags: dict) -> None:
    for m, t in flags.items():
        if m.training != t:  # nn.Module.__setattr__ is slow: touch only what eval() changed
            m.training = t


def _new_engine(model, selected: dict, acc: dict, lead: tuple, training: tuple, x, b: int, output_fn) -> _Engine:
    plan, cached = _plan_for(model, selected, x, b, training)
    engine = _Engine(model, plan, acc, selected, lead, output_fn)
    engine.cached_plan = cached
    return engine


def _run_checked(
    engine: _Engine, model, selected, acc, lead, training, x, y, b, k, start, loss, kind, draws
) -> _Engine:
    """_run_batch; if a plan from the cache turns out stale on its first batch (a layer ran a different number of
    times: the forward depends on state the cache key cannot see), probe again and rerun the batch. Nothing was
    accumulated by then: the call-count check runs before the backward. Returns the engine in use."""
    try:
        _run_batch(engine, model, x, y, b, k, start, loss, kind, draws)
    except _CallsChanged:
        if not engine.cached_plan:
            raise
        engine.close()
        plan, _ = _plan_for(model, selected, x, b, training, fresh=True)
        weights, engine = engine.weights, _Engine(model, plan, acc, selected, lead, engine.output_fn)
        engine.weights = weights
        _run_batch(engine, model, x, y, b, k, start, loss, kind, draws)
    engine.cached_plan = False
    return engine


def _fill_unused(acc: dict, selected: dict, lead: tuple) -> None:
    """Zeros for the parameters that got no gradient (unused, or no batch)."""
    for n, a in acc.items():
        if a is None:
            p = selected[n]
            acc[n] = torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device)


def _run_batch(engine: _Engine, model, x, y, b: int, k: int, start: int, loss, kind: str, draws: int):
    plan = engine.plan
    engine.calls = {}
    engine.batch = b
    anchor = engine.anchor = torch.zeros((), requires_grad=True, device=next(iter(engine.acc_param.values())).device)
    try:
        engine.capturing = True
        try:
            with torch.enable_grad():
                if engine.taps is not None:
                    with engine.taps:
                        out = _call(model, x)
                else:
                    out = _call(model, x)
                out = _inputs.select_output(out, engine.output_fn)
        finally:
            engine.capturing = False
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the model returned {type(out).__name__}; fisher_diag needs a tensor output (wrap the "
                "model to select the logits)"
            )
        if out.shape[0] != b:
            raise ValueError(f"the model's output has {out.shape[0]} rows for a batch of {b} samples")
        for mod, n in engine.calls.items():
            if plan.calls.get(mod, 0) != n:
                raise _CallsChanged(
                    f"{type(mod).__name__} ran {n} times in batch {k} but {plan.calls.get(mod, 0)} "
                    "times in the first batch; fisher_diag needs the same layer calls for every batch"
                )
        engine.scale = 1.0 / draws
        for d in range(draws):
            yd = y if kind == "empirical" else _sample_labels(loss, out)
            losses = per_sample_loss(loss, out, yd, b)
            bad = ~torch.isfinite(losses.detach())
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"the loss of batch {k} (samples {start}..{start + b - 1}) is not finite: sample "
                    f"{start + i} has loss {losses[i].item()}"
                )
            if (engine.handles or engine.taps is not None) and losses.requires_grad:
                torch.autograd.grad(losses.sum(), [anchor], allow_unused=True, retain_graph=d < draws - 1)
            engine.finish_tied(b)
            engine.finish_broadcast()
            if plan.external:
                _external(model, plan.external, engine.acc_param, x, yd, loss, b, engine)
    finally:
        engine.anchor = None
        engine.tied_uses.clear()
        engine.broadcast_grads.clear()
        engine.shared_calls.clear()
        if engine.taps is not None:
            engine.taps.outputs.clear()


def _progress(total, enabled: bool) -> Progress:
    # A bar on a terminal only: fisher_diag is a library call, often made in a loop, so it writes no log lines.
    return Progress(total=total, desc="fisher_diag", unit="sample", leave=False, enabled=enabled, plain=False)


def _factors(rule) -> Callable:
    # Only called for uses whose rules all have the hook (checked before the closed form is chosen).
    fn = hook(rule, "factors")
    assert fn is not None
    return fn


def _spec(spec):
    # A multi-output call always has the spec tree_flatten gave it (None only for a single output).
    assert spec is not None
    return spec
