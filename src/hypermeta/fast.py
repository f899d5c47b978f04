"""The fast inference path of a trained ``HyperModel`` (``HyperModel.prepare_inference``).

``HyperModel.predict`` validates every episode in full, walks the module tree and runs the
target through ``functional_call``: general, and for a small model most of its time. A
``FastPredictor`` does the same arithmetic with the overhead taken out:

* **validation once, at the boundary, lean**: shapes and dtypes are read in Python and
  finiteness is one reduction per tensor; an episode the lean check does not accept goes
  through the model's full validation, so a bad input gets the same error message as
  ``predict`` and a valid one still gets an answer;
* **no module calls**: the support-set encoder's MLPs and the hypernetwork's trunk and head
  become one chain of ``torch.addmm`` calls on weights transposed once; an affine layer
  followed by the mean over the support set, or directly by another affine layer, is folded
  into its neighbour (exact in arithmetic: ``mean(xW + b) = mean(x)W + b`` and
  ``(xW1 + b1)W2 + b2 = x(W1W2) + (b1W2 + b2)``, folded in float64), so the encoder and the
  generator run 5 matrix products instead of 7; the generated vector is cut at the spec's
  precomputed offsets and the target runs its ``LinearPlan``; all under
  ``torch.inference_mode``;
* optionally ``torch.compile`` of that function (``compile=True``; pays off only after
  warm-up, and recompiles for every new support/query size).

Outputs equal ``predict``'s to float rounding (tested: the folds reassociate sums; with
``fold=False`` they are bit-identical). The chain holds a snapshot of the weights: build the
predictor again after further training. What the lean path does not cover — fine-tuning steps, a
class or ridge head, encoders other than a mean-pooled ``SetEncoder`` over raw inputs,
generators other than ``MLPHyperNet``, targets without a plan — runs ``predict`` unchanged
(``lean`` says which).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from hypermeta.encoders import SetEncoder
from hypermeta.episodes import Episode, require_finite
from hypermeta.hypernets import MLPHyperNet
from hypermeta.plan import _activation
from hypermeta.target import FunctionalTarget

_MEAN = "mean"  # a chain step: the mean over the support set (rows of each task)
_Step = tuple[Tensor, Tensor] | Callable[[Tensor], Tensor] | str


def _chain(modules: Sequence[torch.nn.Module | str], fold: bool) -> list[_Step] | None:
    """The steps of ``modules`` (Linear layers, activations and ``_MEAN`` markers, given as the
    string) with weights transposed for ``addmm``; ``None`` if something else is there."""
    steps: list[_Step] = []
    for module in modules:
        if isinstance(module, str):
            steps.append(module)
        elif type(module) is torch.nn.Linear:
            bias = module.bias if module.bias is not None else \
                torch.zeros(module.out_features, dtype=module.weight.dtype)
            steps.append((module.weight.detach().t().double(), bias.detach().double()))
        elif (act := _activation(module)) is not None:
            steps.append(act)
        else:
            return None
    if fold:
        for i in range(len(steps) - 2):  # Linear, mean -> mean, Linear (mean is linear)
            if isinstance(steps[i], tuple) and steps[i + 1] == _MEAN:
                steps[i], steps[i + 1] = steps[i + 1], steps[i]
        folded: list[_Step] = []
        for step in steps:
            last = folded[-1] if folded else None
            if isinstance(step, tuple) and isinstance(last, tuple):
                (w1, b1), (w2, b2) = last, step
                if w1.shape[0] * w2.shape[1] <= w1.numel() + w2.numel():  # never larger
                    folded[-1] = (w1 @ w2, b1 @ w2 + b2)
                    continue
            folded.append(step)
        steps = folded
    dtype = next(m for m in modules if isinstance(m, torch.nn.Linear)).weight.dtype
    return [(step[0].to(dtype).contiguous(), step[1].to(dtype)) if isinstance(step, tuple)
            else step for step in steps]


class FastPredictor:
    """``predict`` of a trained ``HyperModel`` without its per-call overhead.

    Build it with ``model.prepare_inference()`` after training.

    Arguments:
        model: the trained ``HyperModel``.
        compile: also run the lean path through ``torch.compile``.
        fold: fold adjacent affine layers (default); ``False`` keeps every layer, for
            bit-identical outputs.

    Example:
        >>> fast = model.prepare_inference()
        >>> pred = fast(episode)          # == model.predict(episode), [T, Q, ...]
    """

    def __init__(self, model: Any, *, compile: bool = False, fold: bool = True) -> None:
        self.model = model
        self.lean = self._plan(model, fold)
        self._run: Callable[[Tensor, Tensor, Tensor], Tensor] = self._lean_predict
        if compile and self.lean:
            self._run = torch.compile(self._lean_predict, dynamic=False)

    def _plan(self, model: Any, fold: bool) -> bool:
        encoder, hypernet, target = model.encoder, model.hypernet, model.target
        if (model.finetune_steps or model.class_head is not None
                or not isinstance(encoder, SetEncoder) or not isinstance(hypernet, MLPHyperNet)
                or not isinstance(target, FunctionalTarget) or target._plan is None
                or encoder.x_encoder is not None or encoder.pooling != "mean"
                or encoder.num_classes is not None or not encoder.labels):
            return False
        modules = [*encoder.phi, _MEAN, *encoder.rho, *hypernet.trunk, hypernet.head]
        steps = _chain(modules, fold)
        if steps is None:
            return False
        self._steps = steps
        spec = target.spec
        self._cuts = list(zip(spec.names, spec.sizes(), spec.shapes))
        self._x_shape = target.input_shape
        self._y_dim = encoder.y_dim
        self._dtype, self._device = hypernet.head.weight.dtype, hypernet.head.weight.device
        return True

    def __call__(self, episode: Episode) -> Tensor:
        """Query predictions ``[T, Q, ...]`` of each task's generated network (as
        ``model.predict(episode)``); a ``ValueError`` for invalid episodes or non-finite
        predictions, with ``predict``'s messages."""
        model = self.model
        if not self.lean:
            out: Tensor = model.predict(episode)
            return out
        if self._accepts(episode):
            sx, sy, qx = episode.support_x, episode.support_y, episode.query_x
        else:  # the full validation: its error messages, its casts
            prepared = model.prepare(episode)
            sx, sy, qx = prepared.support_x, prepared.support_y, prepared.query_x
        with torch.inference_mode():
            out = self._run(sx, sy, qx)
        if not _finite_sum(out):
            require_finite([out], "predictions")
        return out

    def _accepts(self, episode: Episode) -> bool:
        """The lean check: True only for an episode ``predict`` takes as it is (anything
        else goes through the model's full validation)."""
        if type(episode) is not Episode or episode.support_mask is not None \
                or episode.ways is not None:
            return False
        sx, sy, qx, qy = episode.support_x, episode.support_y, episode.query_x, episode.query_y
        if not all(isinstance(t, Tensor) for t in (sx, sy, qx)):
            return False
        desc = episode.descriptor  # the set encoder ignores it; predict still checks it
        if desc is not None and not (
                isinstance(desc, Tensor) and desc.dim() > 0 and desc.shape[0] == qx.shape[0]
                and (not desc.is_floating_point() or _finite_sum(desc))):
            return False
        dtype, device, width = self._dtype, self._device, self._y_dim
        shape = tuple(qx.shape[2:])
        if (qx.dim() < 2 or sx.dim() != qx.dim() or qx.shape[0] < 1
                or sx.shape[0] != qx.shape[0] or sx.shape[1] < 1 or sy.shape[:2] != sx.shape[:2]
                or tuple(sx.shape[2:]) != shape
                or (self._x_shape is not None and shape != self._x_shape)
                or not ((sy.dim() == 2 and width == 1) or (sy.dim() == 3 and sy.shape[2] == width))
                or any(t.dtype != dtype or t.device != device for t in (sx, sy, qx))):
            return False
        if qy is not None and (not isinstance(qy, Tensor) or qy.shape[:2] != qx.shape[:2]
                               or (qy.is_floating_point() and not _finite_sum(qy))):
            return False
        # one reduction for all three: a sum that overflows only sends a finite episode
        # through the full validation, which accepts it
        return _finite_sum(sx.sum() + sy.sum() + qx.sum())

    def params(self, episode: Episode) -> dict[str, Tensor]:
        """The generated parameters ``{name: [T, *shape]}`` of each task, as
        ``model.adapted_params(episode)`` (non-finite ones are a ``ValueError`` naming the
        tasks)."""
        if not self.lean:
            out: dict[str, Tensor] = self.model.adapted_params(episode)
            return out
        episode = episode if self._accepts(episode) else self.model.prepare(episode)
        with torch.no_grad():  # not inference tensors: callers may fine-tune them
            flat = self._lean_flat(episode.support_x, episode.support_y)
        if not _finite_sum(flat):
            require_finite([flat], "generated parameters")
        return self._cut(flat)

    def _lean_predict(self, sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        out: Tensor = self.model.target.run(self._cut(self._lean_flat(sx, sy)), qx)
        return out

    def _lean_flat(self, sx: Tensor, sy: Tensor) -> Tensor:
        # SetEncoder (mean pooling) -> MLPHyperNet: one chain of addmm -> (T, P)
        num_tasks, shots = sx.shape[:2]
        h = torch.cat([sx.reshape(num_tasks * shots, -1),
                       sy.reshape(num_tasks * shots, -1)], dim=1)  # (T*S, x + y)
        for step in self._steps:
            if isinstance(step, tuple):
                h = torch.addmm(step[1], h, step[0])
            elif isinstance(step, str):  # _MEAN
                h = h.reshape(num_tasks, shots, -1).mean(dim=1)
            else:
                h = step(h)
        return h

    def _cut(self, flat: Tensor) -> dict[str, Tensor]:
        # (T, P) -> {name: (T, *shape)}, views at the spec's offsets
        params, start, num_tasks = {}, 0, flat.shape[0]
        for name, size, shape in self._cuts:
            params[name] = flat[:, start:start + size].reshape(num_tasks, *shape)
            start += size
        return params


def _finite_sum(t: Tensor) -> bool:
    return math.isfinite(float(t.sum()))
