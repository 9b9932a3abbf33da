"""nn.LSTM, nn.GRU, nn.RNN (tanh/relu): any num_layers, bidirectional, batch_first, bias, LSTM proj_size.

A recurrent weight is used at every step, so per sample W_i = Σ_t δ_it u_itᵀ with δ the gradient of a gate
pre-activation and u the step's input x_t (W_ih) or previous state h_{t−1} (W_hh): the "Linear on sequences"
problem, solved without per-sample gradients in memory by :func:`fisherx._ops.sqgrad_gemm`. Biases: Σ_i (Σ_t δ_it)².

PyTorch's fused kernel hides the gates, so the rule recomputes the forward from the recorded input and initial state
with plain ops (one GEMM per layer and direction for the input part, one small GEMM per step for the recurrence),
then backpropagates through time by hand from the gradients of the layer's outputs (output, h_n and, for the LSTM,
c_n; zero where the model does not use them), layer by layer from the top, each direction on its own:

- LSTM (gates i, f, g, o; c_t = f c_{t−1} + i g, m_t = o tanh c_t, h_t = m_t or W_hr m_t): δo = δm tanh c,
  δc += δm o (1 − tanh² c), δi = δc g, δg = δc i, δf = δc c_{t−1}, then through σ/tanh; W_hr pairs δh with m.
- GRU (r, z, n; n = tanh(x_n + r (W_hn h + b_hn)), h_t = (1 − z) n + z h_{t−1}): the n gate's recurrent
  pre-activation gradient is r·δn, its input one δn, so W_ih and W_hh get different δ.
- RNN: δ = δh (1 − h²) (tanh) or δh [h > 0] (relu).

The gradient reaching layer l − 1 is Σ_directions δ W_ih. Bootstrap weights (R, B) go to the same kernel calls.
Inter-layer dropout is off (fisher_diag runs the model in eval mode). PackedSequence inputs are refused.
"""

from __future__ import annotations

import torch
from torch import nn

from . import attach_hooks, batch_sum, register_rule
from .attention import seq_sq


def _batch_dims(layer: nn.RNNBase, tensors) -> list[int]:
    # output (B, T, ·) or (T, B, ·); h_n and c_n are (layers·directions, B, ·) either way.
    n = 3 if layer.mode == "LSTM" else 2
    if len(tensors) != n:
        raise TypeError(
            f"fisher_diag: {type(layer).__name__} returned {len(tensors)} tensors instead of {n}; "
            "PackedSequence inputs are not supported (pad the batch and mask the loss instead)"
        )
    return [0 if layer.batch_first else 1] + [1] * (n - 1)


def _inputs(layer: nn.RNNBase, activations):
    x = activations[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"fisher_diag: {type(layer).__name__} got a {type(x).__name__} input; PackedSequence inputs "
            "are not supported (pad the batch and mask the loss instead)"
        )
    if x.dim() != 3:
        raise ValueError(
            f"{type(layer).__name__} got an unbatched input of shape {tuple(x.shape)}; fisher_diag needs a batch dim"
        )
    hx = activations[1] if len(activations) > 1 else activations.kwargs.get("hx")
    x = x if layer.batch_first else x.transpose(0, 1)
    return x.transpose(0, 1), hx  # time-major (T, B, ·) so that each step's slice is contiguous


def _initial(layer, hx, idx: int, b: int, x: torch.Tensor):
    """(h0, c0) of layer·direction ``idx`` (c0 None unless LSTM), zeros when the model passed none."""
    hsz = layer.proj_size or layer.hidden_size
    if hx is None:
        h0 = x.new_zeros(b, hsz)
        return h0, (x.new_zeros(b, layer.hidden_size) if layer.mode == "LSTM" else None)
    if layer.mode == "LSTM":
        return hx[0][idx], hx[1][idx]
    return hx[idx], None


def _params(layer, lyr: int, d: int) -> dict:
    sfx = f"_l{lyr}" + ("_reverse" if d else "")
    names = {
        "w_ih": "weight_ih" + sfx,
        "w_hh": "weight_hh" + sfx,
        "b_ih": "bias_ih" + sfx,
        "b_hh": "bias_hh" + sfx,
        "w_hr": "weight_hr" + sfx,
    }
    return {k: (n, getattr(layer, n, None)) for k, n in names.items()}


def _steps(t: int, d: int):
    return range(t - 1, -1, -1) if d else range(t)


def _input_part(x, p) -> torch.Tensor:
    """x W_ihᵀ + b_ih + b_hh for all steps at once (LSTM, RNN: both biases add to the same pre-activation)."""
    b_ih, b_hh = p["b_ih"][1], p["b_hh"][1]
    return torch.nn.functional.linear(x, p["w_ih"][1], b_ih if b_hh is None else b_ih + b_hh)


def _previous(h0: torch.Tensor, out: torch.Tensor, d: int) -> torch.Tensor:
    """The state each step starts from, time-major: h0 then the outputs, shifted by one in processing order (one
    concatenation rather than a copy per step)."""
    return torch.cat([h0[None], out[:-1]]) if d == 0 else torch.cat([out[1:], h0[None]])


def _lstm_forward(layer, x, p, h, c, d):
    """Run one LSTM direction; return its outputs (T, B, H_out) and what its backward needs. Each step writes its
    results into preallocated slices (out=): at small batches the step loop is bound by the number of ops."""
    t_len, b, _ = x.shape
    hs = layer.hidden_size
    w_hr = p["w_hr"][1]
    h0 = h
    pre = _input_part(x, p)
    acts = torch.empty_like(pre)  # i, f, g, o after their nonlinearity
    cs = x.new_empty(t_len + 1, b, hs)  # cs[s] is c before step s (in processing order), cs[T] the last c
    cs[0] = c
    tcs = x.new_empty(t_len, b, hs)  # tanh c_t, time-major
    ms = x.new_empty(t_len, b, hs) if w_hr is not None else None
    out = x.new_empty(t_len, b, h.shape[-1])
    w_hh_t = p["w_hh"][1].t()
    gates = x.new_empty(b, 4 * hs)  # one step's pre-activations
    for s, t in enumerate(_steps(t_len, d)):
        a = acts[t]
        torch.addmm(pre[t], h, w_hh_t, out=gates)
        torch.sigmoid(gates, out=a)  # g's sigmoid is overwritten by its tanh
        torch.tanh(gates[:, 2 * hs : 3 * hs], out=a[:, 2 * hs : 3 * hs])
        c = torch.mul(a[:, hs : 2 * hs], c, out=cs[s + 1]).addcmul_(a[:, :hs], a[:, 2 * hs : 3 * hs])
        m = torch.mul(a[:, 3 * hs :], torch.tanh(c, out=tcs[t]), out=out[t] if ms is None else ms[t])
        h = m if w_hr is None else torch.mm(m, w_hr.t(), out=out[t])
    return out, {"acts": acts, "cs": cs, "tcs": tcs, "hprev": _previous(h0, out, d), "ms": ms}


def _blocks(t_len: int, width: int, d: int):
    """The backward's steps (reverse processing order) in blocks of consecutive time indices (lo, hi, steps), each
    about :data:`BLOCK` elements of a (B, width) step: the factors that do not depend on the incoming gradient are
    formed a block at a time, in few ops (the loop is op-bound at small batches) on data that stays in cache (a
    whole-sequence pass is memory-bound at large ones)."""
    n = max(1, BLOCK // max(1, width))
    steps = list(reversed(_steps(t_len, d)))
    for s in range(0, t_len, n):
        blk = steps[s : s + n]
        yield min(blk), max(blk) + 1, blk


BLOCK = 1 << 16


def _lstm_backward(layer, st, p, dout, dh, dc, d):
    """BPTT of one LSTM direction: δ of the gate pre-activations (T, B, 4H) (for W_ih, and again for W_hh), δh at
    each step for W_hr (or None), and the gradients of the initial h and c."""
    t_len, b = dout.shape[:2]
    hs = layer.hidden_size
    acts, cs, tcs = st["acts"], st["cs"], st["tcs"]
    c_prev = cs[:-1] if d == 0 else cs[:-1].flip(0)  # time-major
    w_hr = p["w_hr"][1]
    dgates = torch.empty_like(acts)
    dhs = torch.empty_like(dout) if w_hr is not None else None
    w_hh = p["w_hh"][1]
    for lo, hi, blk in _blocks(t_len, b * hs, d):
        i, f, g, o = acts[lo:hi].split(hs, dim=-1)
        tc = tcs[lo:hi]
        k_c = o * (1 - tc * tc)  # δc += δm k_c
        k_o = tc * o * (1 - o)  # δo = δm k_o
        k_ifg = torch.stack([g * i * (1 - i), c_prev[lo:hi] * f * (1 - f), i * (1 - g * g)], dim=2)  # δ{i,f,g}=δc k
        for t in blk:
            dh = dh + dout[t]
            if dhs is not None:
                dhs[t] = dh
                dm = dh @ w_hr
            else:
                dm = dh
            k = t - lo
            dc = torch.addcmul(dc, dm, k_c[k])
            dg_ = dgates[t]
            torch.mul(dc[:, None, :], k_ifg[k], out=dg_[:, : 3 * hs].unflatten(1, (3, hs)))
            torch.mul(dm, k_o[k], out=dg_[:, 3 * hs :])
            dc = dc * f[k]
            dh = dg_ @ w_hh
    return dgates, dgates, dhs, dh, dc


def _gru_forward(layer, x, p, h, c, d):
    t_len, b, _ = x.shape
    hs = layer.hidden_size
    h0 = h
    pre = torch.nn.functional.linear(x, p["w_ih"][1], p["b_ih"][1])
    rz = x.new_empty(t_len, b, 2 * hs)
    ns = x.new_empty(t_len, b, hs)
    gh = x.new_empty(t_len, b, 3 * hs)  # W_hh h + b_hh; r multiplies its n part
    out = x.new_empty(t_len, b, hs)
    w_hh_t, b_hh = p["w_hh"][1].t(), p["b_hh"][1]
    for t in _steps(t_len, d):
        ght = torch.mm(h, w_hh_t, out=gh[t]) if b_hh is None else torch.addmm(b_hh, h, w_hh_t, out=gh[t])
        torch.sigmoid(torch.add(pre[t, :, : 2 * hs], ght[:, : 2 * hs], out=rz[t]), out=rz[t])
        n = torch.tanh(torch.addcmul(pre[t, :, 2 * hs :], rz[t, :, :hs], ght[:, 2 * hs :], out=ns[t]), out=ns[t])
        h = torch.lerp(n, h, rz[t, :, hs:], out=out[t])  # (1 − z) n + z h
    return out, {"rz": rz, "ns": ns, "nh": gh[..., 2 * hs :], "hprev": _previous(h0, out, d)}


def _gru_backward(layer, st, p, dout, dh, dc, d):
    t_len, b = dout.shape[:2]
    hs = layer.hidden_size
    rz, ns, nh, hprev = st["rz"], st["ns"], st["nh"], st["hprev"]
    dgi = rz.new_empty(t_len, b, 3 * hs)
    dgh = torch.empty_like(dgi)
    w_hh = p["w_hh"][1]
    for lo, hi, blk in _blocks(t_len, b * hs, d):  # see _blocks
        r, z, n = rz[lo:hi, :, :hs], rz[lo:hi, :, hs:], ns[lo:hi]
        k_n = (1 - z) * (1 - n * n)  # δn = δh k_n
        k_z = (hprev[lo:hi] - n) * z * (1 - z)  # δz = δh k_z
        k_r = nh[lo:hi] * r * (1 - r)  # δr = δn k_r
        for t in blk:
            k = t - lo
            dh = dh + dout[t]
            dn = torch.mul(dh, k_n[k], out=dgi[t, :, 2 * hs :])
            torch.mul(dh, k_z[k], out=dgi[t, :, hs : 2 * hs])
            torch.mul(dn, k_r[k], out=dgi[t, :, :hs])
            dgh[t, :, : 2 * hs] = dgi[t, :, : 2 * hs]
            torch.mul(dn, r[k], out=dgh[t, :, 2 * hs :])
            dh = torch.addmm(dh * z[k], dgh[t], w_hh)
    return dgi, dgh, None, dh, None


def _rnn_forward(layer, x, p, h, c, d):
    t_len = x.shape[0]
    pre = _input_part(x, p)
    out = torch.empty_like(pre)
    hprev = torch.empty_like(pre)
    w_hh_t = p["w_hh"][1].t()
    act = torch.tanh if layer.mode == "RNN_TANH" else torch.relu
    for t in _steps(t_len, d):
        hprev[t] = h
        h = act(torch.addmm(pre[t], h, w_hh_t))
        out[t] = h
    return out, {"hprev": hprev, "out": out}


def _rnn_backward(layer, st, p, dout, dh, dc, d):
    out = st["out"]
    dpre = torch.empty_like(out)
    w_hh = p["w_hh"][1]
    for t in reversed(_steps(out.shape[0], d)):
        dh = dh + dout[t]
        y = out[t]
        torch.mul(dh, (1 - y * y) if layer.mode == "RNN_TANH" else (y > 0).to(y.dtype), out=dpre[t])
        dh = dpre[t] @ w_hh
    return dpre, dpre, None, dh, None


_IMPL = {
    "LSTM": (_lstm_forward, _lstm_backward),
    "GRU": (_gru_forward, _gru_backward),
    "RNN_TANH": (_rnn_forward, _rnn_backward),
    "RNN_RELU": (_rnn_forward, _rnn_backward),
}


def _split_grads(layer, backprops, t_len: int, b: int, like: torch.Tensor):
    """The gradients of output (T, B, D·H_out), h_n (L·D, B, H_out), c_n (or None), zeros where missing."""
    g_out, g_state = backprops
    d_num = 2 if layer.bidirectional else 1
    hsz = layer.proj_size or layer.hidden_size
    if g_out is None:
        g_out = like.new_zeros(t_len, b, d_num * hsz)
    else:
        g_out = g_out.transpose(0, 1) if layer.batch_first else g_out
    g_h, g_c = g_state if layer.mode == "LSTM" else (g_state, None)
    n = layer.num_layers * d_num
    if g_h is None:
        g_h = like.new_zeros(n, b, hsz)
    if layer.mode == "LSTM" and g_c is None:
        g_c = like.new_zeros(n, b, layer.hidden_size)
    return g_out, g_h, g_c


def _square_sums(p, dgi, dgh, dhs, x, st, weights) -> dict:
    """The summed squares of one layer·direction's parameters from its gate gradients (time-major)."""
    out = {}
    for key, g, u in (("w_ih", dgi, x), ("w_hh", dgh, st["hprev"]), ("w_hr", dhs, st.get("ms"))):
        name, w = p[key]
        if w is not None and w.requires_grad:  # (T, B, ·) → (B, T, ·) views for the kernel
            out[name] = seq_sq(g.transpose(0, 1), u.transpose(0, 1), weights)
    for key, g in (("b_ih", dgi), ("b_hh", dgh)):
        name, w = p[key]
        if w is not None and w.requires_grad:
            out[name] = batch_sum(g.sum(0).square(), weights)
    return out


def _run(layer: nn.RNNBase, activations, backprops, weights, input_grads: bool):
    """The rule's result and, with ``input_grads``, the gradients of the layer's input and initial state (what
    autograd's backward through the fused kernel would give), from the same recomputation and BPTT."""
    x, hx = _inputs(layer, activations)
    t_len, b, _ = x.shape
    d_num = 2 if layer.bidirectional else 1
    fwd, bwd = _IMPL[layer.mode]
    with torch.no_grad():
        states, inputs = [], []
        for lyr in range(layer.num_layers):
            inputs.append(x)
            outs = []
            for d in range(d_num):
                p = _params(layer, lyr, d)
                h0, c0 = _initial(layer, hx, lyr * d_num + d, b, x)
                o, st = fwd(layer, x, p, h0, c0, d)
                outs.append(o)
                states.append(st)
            x = torch.cat(outs, -1) if d_num == 2 else outs[0]
        g_out, g_h, g_c = _split_grads(layer, backprops, t_len, b, x)
        hsz = layer.proj_size or layer.hidden_size
        res = {}
        dh0: list = [None] * (layer.num_layers * d_num)
        dc0: list = [None] * (layer.num_layers * d_num)
        for lyr in range(layer.num_layers - 1, -1, -1):
            dx = None
            for d in range(d_num):
                idx = lyr * d_num + d
                p = _params(layer, lyr, d)
                dgi, dgh, dhs, dh0[idx], dc0[idx] = bwd(
                    layer,
                    states[idx],
                    p,
                    g_out[..., d * hsz : (d + 1) * hsz],
                    g_h[idx],
                    None if g_c is None else g_c[idx],
                    d,
                )
                res.update(_square_sums(p, dgi, dgh, dhs, inputs[lyr], states[idx], weights))
                if lyr or input_grads:
                    part = dgi @ p["w_ih"][1]
                    dx = part if dx is None else dx + part
            g_out = dx
    if not input_grads:
        return res, None
    assert g_out is not None  # layer 0's input gradient
    grads = [g_out if not layer.batch_first else g_out.transpose(0, 1)]
    if hx is not None:
        grads.append(torch.stack(dh0))
        if layer.mode == "LSTM":
            grads.append(torch.stack(dc0))
    return res, grads


@register_rule(nn.LSTM, nn.GRU, nn.RNN)
def recurrent(layer: nn.RNNBase, activations, backprops, weights=None) -> dict:
    """Σ_i (∂ℓ_i/∂θ)² of every weight and bias of the recurrent layer (or the R weighted sums, see the module)."""
    return _run(layer, activations, backprops, weights, False)[0]


def with_input_grads(layer: nn.RNNBase, activations, backprops, weights=None) -> tuple[dict, list]:
    """The rule's result and the gradients of the layer's tensor inputs, in the order they are passed (input,
    then h0 and, for the LSTM, c0): the engine then skips autograd's own backward through the fused kernel,
    whose work the BPTT above repeats."""
    res, grads = _run(layer, activations, backprops, weights, True)
    assert grads is not None
    return res, grads


attach_hooks(recurrent, batch_dims=_batch_dims, input_grads=with_input_grads)
