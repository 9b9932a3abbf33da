"""Per-layer rules of the Fisher engine: a registry keyed by module type, one small file per layer family.

A rule is a function ``rule(layer, activations, backprops) -> {param_name: Σ_i (∂ℓ_i/∂θ)²}`` (Opacus' grad-sample
signature, returning summed squares instead of per-sample gradients). A rule that also takes ``weights=None``
supports the in-pass bootstrap: given ``weights`` (R, B) it returns the R weighted sums
``{param_name: (R, *shape)}`` with entry r = Σ_i w_ri·(∂ℓ_i/∂θ)², from the same per-sample quantities (rules without
it run through the fallback when ``fisher_diag(bootstrap=R)`` asks for replicates). ``activations`` is the tuple of the
layer's positional inputs (detached; keyword inputs in ``activations.kwargs``), ``backprops`` the gradient of
Σ_i ℓ_i with respect to the layer's output, whose row i is ∂ℓ_i/∂y_i because samples are independent. A rule
returns an entry for each of the layer's own (non-recursive) parameters that it computes.

Adding a layer is one new file here::

    @register_rule(MyLayer)
    def my_layer(layer, activations, backprops):
        ...
        return {"weight": ..., "bias": ...}

Modules without a rule go through :mod:`.fallback` (chunked ``torch.func``), with a one-time warning.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from ..._registry import Registry, decorator_for

# rule(layer, activations, backprops[, weights=None]) -> {param_name: summed squares}; the layer's type varies.
Rule = Callable[..., dict]

# Keys: a module type, or the qualified name "package.module.Class" of a third-party layer, so that its rule needs no
# import of that package (Hugging Face's GPT-2 Conv1D, see linear.py).
RULES: Registry[type | str, Rule] = Registry("layer rule")


class Activations(tuple):
    """A layer's positional inputs, with its keyword inputs in ``.kwargs``."""

    kwargs: dict

    def __new__(cls, args, kwargs=None):
        obj = super().__new__(cls, args)
        obj.kwargs = dict(kwargs or {})
        return obj


def register_rule(*module_types: type | str, replace: bool = False) -> Callable[[Rule], Rule]:
    """Decorator: register ``rule`` for the given module types, or qualified class names such as
    ``"transformers.pytorch_utils.Conv1D"`` (``replace=True`` to override a built-in rule)."""
    return decorator_for(RULES, *module_types, replace=replace)


def attach_hooks(rule: Rule, **hooks: Callable) -> None:
    """Give ``rule`` optional hooks the engine looks up by name (:func:`hook`): ``factors`` (the per-sample factors
    of a weight used more than once, for the closed form over uses), ``batch_dims`` and ``claims`` (which outputs
    a layer's rule covers), ``input_grads`` (the rule's result together with the gradients of the layer's tensor
    inputs, in the order they are passed: the engine then skips autograd's backward through the layer)."""
    for name, fn in hooks.items():
        setattr(rule, name, fn)


def hook(rule: Rule | None, name: str) -> Callable | None:
    """The hook ``name`` of ``rule`` given by :func:`attach_hooks`, else None."""
    return getattr(rule, name, None)


def batch_sum(sq: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The batch reduction of per-sample squares ``sq`` (B, ...): Σ_i sq_i, or with bootstrap ``weights`` (R, B) the
    (R, ...) tensor of Σ_i w_ri·sq_i (one tensordot: the replicates share the per-sample squares)."""
    if weights is None:
        return sq.sum(0)
    return torch.tensordot(weights.to(sq.dtype), sq, dims=([1], [0]))


@functools.cache  # asked once per layer and batch: inspect only once per rule
def supports_weights(rule: Rule) -> bool:
    """Whether ``rule`` takes the bootstrap ``weights`` keyword (the built-in rules all do)."""
    import inspect

    try:
        return "weights" in inspect.signature(rule).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def find_rule(module: nn.Module) -> Rule | None:
    """The rule registered for ``type(module)``, else None.

    A subclass inherits its base's rule only if it does not override ``forward``: a subclass that computes
    something else (a LoRA Linear, say) must not be treated as its base, so it goes to the fallback.
    """
    cls = type(module)
    for base in cls.__mro__:
        key = base if base in RULES else f"{base.__module__}.{base.__qualname__}"
        if key in RULES:
            return (
                RULES[key] if base is cls or getattr(cls, "forward", None) is getattr(base, "forward", None) else None
            )
    return None


# Importing the families registers their rules.
from . import attention, conv, embedding, linear, norm, recurrent  # noqa: E402,F401
from .fallback import fallback_rule, per_sample_grads  # noqa: E402,F401
