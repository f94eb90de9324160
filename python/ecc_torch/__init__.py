"""Train a PyTorch module in ecc's equivalence-class (path) coordinates.

ecc finds a ReLU network's rescaling symmetries and the coordinates in which EC-SGD (G-SGD)
trains: for every block, free skeleton values V (coordinate q_k = V_k * P of its own chain,
q_k = V_k when unchained) and, for every other weight, its basis-path value p = w * P_chain
(chained) or p = w (unchained); designated skeleton weights stay constant. This package
applies ecc's plan for a model you exported from your ``nn.Module`` to that module itself:
the weights become functions of (p, q) through ``torch.nn.utils.parametrize``, so your own
optimizer, loop, GPUs and DistributedDataParallel train in path space unchanged.

    ecc convert model.onnx -o out            # writes out/model.ec.json and out/model.ec.onnx
    handle = ecc_torch.apply(module, "out/model.ec.json", check_input=x)
    opt = torch.optim.SGD(handle.param_groups(weight_decay=1e-4), lr=0.1, momentum=0.9)
    ...                                      # train as usual
    ecc_torch.remove(module)                 # fold back: ordinary weights

SGD with momentum on these parameters, weight decay on everything but the q's, is EC-SGD's
step (spec section 5; ecc's docs/ec-graph.md), without EC-SGD's guard on R: ecc's own
``ecc train`` floors R = q'/q at 0.1; here a step may take a q across zero (a V changes
sign). Keep the learning rate where ``ecc train`` would not need the guard.
"""

import json
import os

import torch
from torch import nn
from torch.nn.utils import parametrize as _parametrize

from ._onnx import initializers

__all__ = ["apply", "remove", "Handle", "Plan", "initializers"]


class Plan:
    """The blocks of an ecc plan (``<stem>.ec.json``, docs/plan-schema.md)."""

    def __init__(self, path):
        with open(path) as f:
            self.raw = json.load(f)
        self.path = path
        self.blocks = self.raw.get("blocks", [])
        for b in self.blocks:
            for t in b["tensors"]:
                if "dims" not in t:
                    raise ValueError(
                        f"{path}: tensor entries without 'dims': written by an older ecc; run ecc convert again"
                    )

    def tensors(self):
        for bi, b in enumerate(self.blocks):
            for t in b["tensors"]:
                yield bi, t


def _chain_of(t, i):
    """The chain of flat index i of tensor role t, or None when unchained."""
    chain = t.get("chain") or []
    if not chain:
        return None
    axis = t["chain_axis"]
    inner = 1
    for d in t["dims"][axis + 1 :]:
        inner *= d
    return chain[(i // inner) % len(chain)]


class BlockCoordinates(nn.Module):
    """The q coordinates of one block's free skeleton values, and the V's and chain values
    P_c = prod_{k in c} V_k computed from them (level by level where a V sits on a chain of
    earlier V's, as in ecc's DAG blocks)."""

    def __init__(self, block, q0):
        super().__init__()
        self.q = nn.Parameter(q0)
        n = len(block["free_skeleton"])
        roles = {t["param"]: t for t in block["tensors"]}
        chain_of_v = [
            _chain_of(roles[s["param"]], s["index"]) for s in block["free_skeleton"]
        ]
        monos = block["chains"]
        level = [0] * n
        for k in range(n):
            c = chain_of_v[k]
            if c is not None:
                for j in monos[c]:
                    if j >= k:
                        raise ValueError(f"V {k} sits on a chain through a later V {j}")
                    level[k] = max(level[k], level[j] + 1)
        self.top = max(level, default=0)
        self.simple_p = len(monos) == n and all(m == [c] for c, m in enumerate(monos))
        if self.top > 0:
            order = [k for k in range(n) if level[k] == 0]
            self.register_buffer("order0", torch.tensor(order, dtype=torch.long))
            self.levels = []
            for lv in range(1, self.top + 1):
                ks = [k for k in range(n) if level[k] == lv]
                pos = {k: p for p, k in enumerate(order)}
                rows = [[pos[j] for j in monos[chain_of_v[k]]] for k in ks]
                width = max(1, max(len(r) for r in rows))
                pad = [r + [len(order)] * (width - len(r)) for r in rows]
                self.register_buffer(f"ks{lv}", torch.tensor(ks, dtype=torch.long))
                self.register_buffer(f"rows{lv}", torch.tensor(pad, dtype=torch.long))
                order += ks
            pos = {k: p for p, k in enumerate(order)}
            self.register_buffer("perm", torch.tensor([pos[k] for k in range(n)], dtype=torch.long))
        if not self.simple_p:
            width = max(1, max((len(m) for m in monos), default=1))
            pad = [m + [n] * (width - len(m)) for m in monos]
            self.register_buffer("monos", torch.tensor(pad, dtype=torch.long))

    def values(self):
        """(V, P): the free skeleton values and every chain's value."""
        q = self.q
        one = torch.ones(1, dtype=q.dtype, device=q.device)
        if self.top == 0:
            v = q
        else:
            sofar = q[self.order0]
            for lv in range(1, self.top + 1):
                ext = torch.cat([sofar, one])
                p = ext[getattr(self, f"rows{lv}")].prod(dim=1)
                sofar = torch.cat([sofar, q[getattr(self, f"ks{lv}")] / p])
            v = sofar[self.perm]
        if self.simple_p:
            return v, v
        return v, torch.cat([v, one])[self.monos].prod(dim=1)


class TensorCoordinates(nn.Module):
    """The parametrization of one block tensor: w = p / P_chain (broadcast along the chain
    axis; p itself when unchained), with the fixed scalars overwritten: each V at its own
    scalar, the designated scalars at their constant values."""

    def __init__(self, role, block, plan_block, designated):
        super().__init__()
        self.block = block
        self.dims = list(role["dims"])
        chain = role.get("chain") or []
        self.chained = bool(chain)
        if self.chained:
            axis = role["chain_axis"]
            self.register_buffer("chain", torch.tensor(chain, dtype=torch.long))
            self.view = [len(chain)] + [1] * (len(self.dims) - axis - 1)
        vs = [
            (k, s["index"])
            for k, s in enumerate(plan_block["free_skeleton"])
            if s["param"] == role["param"]
        ]
        v_at = {i for _, i in vs}
        des = [i for i in role["fixed"] if i not in v_at]
        self.register_buffer("v_k", torch.tensor([k for k, _ in vs], dtype=torch.long))
        self.register_buffer(
            "fixed_at", torch.tensor([i for _, i in vs] + des, dtype=torch.long)
        )
        self.register_buffer("designated", designated[des].clone())

    def _chain_values(self):
        _, p = self.block.values()
        return p[self.chain].reshape(self.view)

    def forward(self, p):
        w = p / self._chain_values() if self.chained else p
        if self.fixed_at.numel() == 0:
            return w
        v, _ = self.block.values()
        vals = torch.cat([v[self.v_k], self.designated.to(w.dtype)])
        return w.reshape(-1).scatter(0, self.fixed_at, vals).reshape(w.shape)

    def right_inverse(self, w):
        p = w * self._chain_values() if self.chained else w.clone()
        p = p.reshape(-1).clone()
        p[self.fixed_at] = 0
        return p.reshape(w.shape)


class Handle:
    """What :func:`apply` registered: the coordinate tensors p (one per block tensor) and the
    skeleton coordinates q (one vector per block)."""

    def __init__(self, module, blocks, coords):
        self.module = module
        self.blocks = blocks
        self.coordinates = coords

    @property
    def skeleton(self):
        return [b.q for b in self.blocks]

    def param_groups(self, weight_decay=0.0):
        """Optimizer parameter groups: every parameter of the module with `weight_decay`,
        except the q's, which EC-SGD never decays."""
        qs = {id(q) for q in self.skeleton}
        rest = [p for p in self.module.parameters() if id(p) not in qs]
        return [
            {"params": rest, "weight_decay": weight_decay},
            {"params": self.skeleton, "weight_decay": 0.0},
        ]


def _owner(module, name):
    path, _, attr = name.rpartition(".")
    try:
        owner = module.get_submodule(path) if path else module
    except AttributeError:
        owner = None
    if owner is None or not isinstance(getattr(owner, attr, None), torch.Tensor):
        known = ", ".join(sorted(n for n, _ in module.named_parameters())[:8])
        raise KeyError(
            f"the plan's tensor '{name}' is not a parameter of the module (it has {known}, ...): "
            "export the module itself (both PyTorch exporters keep parameter names) and run ecc convert on that file; "
            "for a module with BatchNorm, export with BN kept (torch.onnx.export(..., optimize=False), or "
            "torch.onnx.export(..., dynamo=False, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)): "
            "the default exporter folds BN into the convs"
        )
    return owner, attr


def apply(module, plan_path, canonical_path=None, check_input=None, atol=1e-5):
    """Apply ecc's plan to `module`: load the canonical weights (the module's function,
    gauge-normalized, from ``<stem>.ec.onnx`` beside the plan unless `canonical_path` says
    otherwise) and register the path-coordinate parametrization of every block tensor.

    Names and shapes are checked against the module. With `check_input` (a batch, or a tuple
    of inputs), the module's outputs before and after must agree (relative error <= `atol`
    in eval mode): that catches a module whose weights are not the ones ecc converted.
    Returns a :class:`Handle`."""
    plan = Plan(plan_path)
    if canonical_path is None:
        stem = plan_path[: -len(".ec.json")] if plan_path.endswith(".ec.json") else plan_path
        canonical_path = stem + ".ec.onnx"
    if not os.path.exists(canonical_path):
        raise FileNotFoundError(f"{canonical_path}: the canonical model ecc convert writes beside the plan")
    for _, t in plan.tensors():
        owner, attr = _owner(module, t["param"])
        have = list(getattr(owner, attr).shape)
        if have != list(t["dims"]):
            raise ValueError(f"'{t['param']}' has shape {have} in the module, {t['dims']} in the plan")
        if _parametrize.is_parametrized(owner, attr):
            raise ValueError(f"'{t['param']}' is parametrized already")
    inputs = None
    if check_input is not None:
        inputs = check_input if isinstance(check_input, (tuple, list)) else (check_input,)
        before = _outputs(module, inputs)
    # The canonical weights: every module parameter and buffer the file holds.
    canon = initializers(canonical_path)
    state = module.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if name in canon:
                if list(canon[name].shape) != list(value.shape):
                    raise ValueError(f"'{name}' has shape {list(value.shape)} in the module, {list(canon[name].shape)} in {canonical_path}")
                value.copy_(canon[name].to(value.dtype))
    if inputs is not None:
        after = _outputs(module, inputs)
        err = max(_rel(a, b) for a, b in zip(after, before))
        if err > atol:
            raise ValueError(
                f"the module's function changed by {err:.2e} (relative) on loading {canonical_path}: "
                "its weights are not the ones ecc converted; export the module again and rerun ecc convert"
            )
    blocks, coords = [], []
    for block in plan.blocks:
        ref = next(iter(module.parameters()))
        v0 = []
        for s in block["free_skeleton"]:
            owner, attr = _owner(module, s["param"])
            v0.append(getattr(owner, attr).detach().reshape(-1)[s["index"]].item())
        v0 = torch.tensor(v0, dtype=ref.dtype, device=ref.device)
        # q_k = V_k * P of its own chain (chains of earlier V's only).
        roles = {t["param"]: t for t in block["tensors"]}
        q0 = v0.clone()
        for k, s in enumerate(block["free_skeleton"]):
            c = _chain_of(roles[s["param"]], s["index"])
            if c is not None:
                for j in block["chains"][c]:
                    q0[k] = q0[k] * v0[j]
        bc = BlockCoordinates(block, q0)
        bc.to(ref.device)
        blocks.append(bc)
        for t in block["tensors"]:
            owner, attr = _owner(module, t["param"])
            w = getattr(owner, attr).detach()
            tc = TensorCoordinates(t, bc, block, w.reshape(-1)).to(w.device)
            _parametrize.register_parametrization(owner, attr, tc)
            coords.append(owner.parametrizations[attr].original)
    if inputs is not None:
        err = max(_rel(a, b) for a, b in zip(_outputs(module, inputs), before))
        if err > atol:
            raise AssertionError(f"the parametrized module's function differs by {err:.2e}")
    return Handle(module, blocks, coords)


def remove(module):
    """Fold every parametrization :func:`apply` registered back into an ordinary parameter
    holding the weight the coordinates stand for."""
    for m in list(module.modules()):
        if not _parametrize.is_parametrized(m):
            continue
        for attr in list(m.parametrizations.keys()):
            if any(isinstance(p, TensorCoordinates) for p in m.parametrizations[attr]):
                _parametrize.remove_parametrizations(m, attr, leave_parametrized=True)


def _outputs(module, inputs):
    was = module.training
    module.eval()
    with torch.no_grad():
        y = module(*inputs)
    module.train(was)
    ys = y if isinstance(y, (tuple, list)) else (y,)
    return [t.detach().double() for t in ys]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
