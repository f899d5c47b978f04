"""``HyperModel``: encoder + hypernetwork + target, the one object users hold; ``Learner``, the
interface every method (hypernetworks and baselines alike) offers the trainer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hypermeta.adapt import adapt
from hypermeta.episodes import Episode, episode_ways, require_finite
from hypermeta.heads import ClassHead, RidgeHead
from hypermeta.kinds import TaskKind, get_kind
from hypermeta.spec import Params
from hypermeta.target import FunctionalTarget

if TYPE_CHECKING:
    from hypermeta.fast import FastPredictor


@dataclass(frozen=True)
class ModelOutput:
    """What one meta-training forward pass returns.

    Attributes:
        pred: query predictions ``[T, Q, ...]``.
        extra_loss: a scalar the generated parts add to the objective (e.g. the structure
            gates' weighted sparsity cost), or ``None``. Returned, never stored on the model.
    """

    pred: Tensor
    extra_loss: Tensor | None = None


class Learner(nn.Module):
    """What the trainer and the evaluator need of a method: ``outputs(episode)`` (the
    meta-training path) and ``predict(episode)`` (adapt to each support set, then predict the
    queries). ``HyperModel`` and the baselines implement it; so can a user's own method."""

    kind: TaskKind

    def outputs(self, episode: Episode, *, validate: bool = True) -> ModelOutput:
        """Query predictions of the meta-training path (and any extra loss term)."""
        return ModelOutput(self(episode))

    def predict(self, episode: Episode) -> Tensor:
        """Evaluation: adapt to each task's support set, then predict its queries."""
        raise NotImplementedError(f"{type(self).__name__} does not implement predict")


class HyperModel(Learner):
    """``descriptor or support set --encoder--> z --hypernet--> params --target--> predictions``.

    Arguments:
        encoder: any task encoder (``TaskEmbedding``, ``SetEncoder``, ...) with ``out_dim``.
        hypernet: a generator built on ``target.spec`` (``MLPHyperNet``, ``ChunkedHyperNet``,
            ``DeltaHyperNet``) whose ``z_dim`` equals ``encoder.out_dim``.
        target: the ``FunctionalTarget`` that runs the generated parameters.
        kind: the task kind (a ``TaskKind`` or its registered name, e.g. ``"regression"``,
            ``"classification"``): the loss that fine-tuning minimises on the support set.
        finetune_steps: SGD steps of each generated network on its support set in ``predict``
            and ``generate`` (0: use the generated weights as they are).
        finetune_lr: their step size.
        class_head: a ``ClassHead`` that generates the target's final layer one row per class
            from the support features (the target is built with ``class_head=``), so one model
            serves any number of ways; or a ``RidgeHead`` that fits a regression head in
            closed form on the support features. When the target generates nothing else
            (``generate="none"``), ``encoder`` and ``hypernet`` are ``None``.

    Inputs are validated once here (shapes, dtypes, NaN/Inf, empty supports, unknown ids)
    and moved to the model's device; nothing is changed when validation fails.

    Example:
        >>> target = FunctionalTarget(MLP(1, 1, hidden=(40, 40)))
        >>> model = HyperModel(SetEncoder(1, 1, 64), MLPHyperNet(target.spec, 64), target)
        >>> pred = model(episode)                  # [T, Q, 1]
        >>> nets = model.generate(episode)         # T standalone nn.Modules
    """

    def __init__(self, encoder: nn.Module | None, hypernet: nn.Module | None,
                 target: FunctionalTarget, *, kind: TaskKind | str = "regression",
                 finetune_steps: int = 0, finetune_lr: float = 0.01,
                 class_head: ClassHead | RidgeHead | None = None) -> None:
        super().__init__()
        self.kind = get_kind(kind)
        if finetune_steps < 0 or finetune_lr <= 0:
            raise ValueError(f"finetune_steps must be >= 0 and finetune_lr > 0; got "
                             f"{finetune_steps}, {finetune_lr}")
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr
        if not isinstance(target, FunctionalTarget):
            raise TypeError(f"target must be a FunctionalTarget, got {type(target).__name__}")
        _check_class_head(class_head, target, self.kind)
        if len(target.spec) == 0:
            if encoder is not None or hypernet is not None:
                raise ValueError("target.spec is empty (only the class head is generated): "
                                 "pass encoder=None and hypernet=None")
        else:
            if getattr(hypernet, "spec", None) != target.spec:
                raise ValueError("hypernet.spec differs from target.spec: build the "
                                 "hypernetwork from target.spec")
            z_dim, out_dim = getattr(hypernet, "z_dim", None), getattr(encoder, "out_dim", None)
            if z_dim != out_dim:
                raise ValueError(f"encoder.out_dim ({out_dim}) must equal hypernet.z_dim "
                                 f"({z_dim})")
        self.encoder, self.hypernet, self.target = encoder, hypernet, target
        self.class_head = class_head

    def parameter_report(self) -> dict[str, float]:
        """Where the parameters are, and what sharing saves.

        ``size_ratio``: hypernetwork + shared target parameters over the parameters of one
        complete target network (below 1: the whole model is smaller than one network). It
        differs from a generator's ``compression_ratio`` (generator over *generated* parameters)
        where deltas are generated: there the generated part is small by design.
        ``stored_per_task``: numbers kept per additional task — a ``TaskEmbedding`` row, or 0
        when the descriptor (support set, features, text) arrives with the request — against
        ``target_params`` for storing a whole network per task.
        """
        from hypermeta.encoders import TaskEmbedding
        from hypermeta.hypernets import count_parameters

        def count(module: nn.Module | None) -> int:
            return 0 if module is None else count_parameters(module)

        generated = self.target.spec.numel()
        shared = count_parameters(self.target)
        full = self.target.network_numel()
        per_class = self.target.feature_dim + 1 if self.class_head is not None else 0
        hyper = count(self.hypernet) + count(self.class_head)
        per_task = self.encoder.out_dim if isinstance(self.encoder, TaskEmbedding) else 0
        return {"encoder_params": count(self.encoder), "hypernet_params": hyper,
                "shared_target_params": shared, "generated_per_task": generated,
                "generated_per_class": per_class,
                "target_params": full, "size_ratio": (hyper + shared) / max(full, 1),
                "stored_per_task": per_task}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters (episodes are cast to it)."""
        return next(self.parameters()).dtype

    def prepare(self, episode: Episode, *, validate: bool = True) -> Episode:
        """Validate ``episode`` for this model (one error listing every problem) and move it to
        the model's device, floating tensors cast to its dtype (a float64 episode is accepted by
        a float32 model). A class-head model also reads the way count here, once per episode
        (``validate=False``, for episodes the library's own samplers made, skips the checks,
        each of which syncs the device)."""
        if not isinstance(episode, Episode):
            raise TypeError(f"episode must be a hypermeta.Episode, got {type(episode).__name__}")
        if not validate:
            return self._with_ways(episode.to(self.device, self.dtype))
        problems = episode.problems()
        if not problems:
            problems = list(getattr(self.encoder, "problems", lambda e: [])(episode))
            shape = self.target.input_shape
            if shape is not None and tuple(episode.query_x.shape[2:]) != shape:
                problems.append(f"query_x examples have shape {list(episode.query_x.shape[2:])}; "
                                f"the target expects {list(shape)}")
            if self.finetune_steps and episode.support_x.shape[1] == 0:
                problems.append("support set is empty: fine-tuning needs support examples")
            if isinstance(self.class_head, ClassHead) and not problems:
                class_problems, ways = _class_problems(episode, self.class_head.descriptions,
                                                       self.target.input_shape)
                problems.extend(class_problems)
                episode = replace(episode, ways=ways)
        if problems:
            raise ValueError("invalid Episode for this HyperModel:\n  - " + "\n  - ".join(problems))
        return self._with_ways(episode.to(self.device, self.dtype))

    def _with_ways(self, episode: Episode) -> Episode:
        # the class head needs the way count: read it once per episode, not per use
        if not isinstance(self.class_head, ClassHead) or episode.ways is not None:
            return episode
        if self.class_head.descriptions and isinstance(episode.descriptor, Tensor):
            return replace(episode, ways=int(episode.descriptor.shape[1]))
        return replace(episode, ways=episode_ways(episode))

    def params(self, episode: Episode) -> Params:
        """The generated parameters of every task in ``episode``: ``{name: [T, *shape]}``."""
        return self._generate(self.prepare(episode))

    def _generate(self, episode: Episode) -> Params:
        # encoder -> hypernetwork -> params; then the class head's rows from support features
        params: Params = {}
        if self.hypernet is not None and self.encoder is not None:
            params = self.hypernet(self.encoder(episode))  # {name: (T, *shape)}
        return self.with_head(params, episode)

    def with_head(self, params: Params, episode: Episode) -> Params:
        """``params`` (the hypernetwork's, ``[T, ...]``) plus the class or ridge head's rows
        computed from ``episode``'s support sets under them; ``params`` as they are when the
        model has no such head. ``episode`` must be ``prepare``-d."""
        if isinstance(self.class_head, RidgeHead):
            support_x, names = episode.support_x, self.target.head_names
            width = episode.support_y.shape[-1] if episode.support_y.dim() == 3 else 1
            zero = {**params, names[0]: support_x.new_zeros(
                        support_x.shape[0], width, self.target.feature_dim),
                    names[1]: support_x.new_zeros(support_x.shape[0], width)}
            base = self.target(zero, support_x)  # (T, S, O): all the head does not add
            features = self.target.features(params, support_x) - base  # exact for additive
            y = episode.support_y.reshape(base.shape).to(base.dtype)
            weight, bias = self.class_head(features, y - base, episode.support_mask)
            return {**params, names[0]: weight, names[1]: bias}
        if self.class_head is not None:
            features = self.target.features(params, episode.support_x)  # (T, S, D)
            described = None
            if self.class_head.descriptions:  # descriptor: one target input per class
                assert isinstance(episode.descriptor, Tensor)
                described = self.target.features(params, episode.descriptor)  # (T, N, D)
            weight, bias = self.class_head(features, episode.support_y, episode_ways(episode),
                                           episode.support_mask, described)
            names = self.target.head_names
            params = {**params, names[0]: weight, names[1]: bias}
        return params

    def outputs(self, episode: Episode, *, validate: bool = True) -> ModelOutput:
        """The meta-training path: query predictions ``[T, Q, ...]`` and the generated parts'
        extra loss (``None`` when no part adds one)."""
        episode = self.prepare(episode, validate=validate)
        params = self._generate(episode)
        pred = self.target(params, episode.query_x)  # (T, Q, ...)
        return ModelOutput(pred, self.target.extra_loss(params))

    def forward(self, episode: Episode) -> Tensor:
        """Predictions of each task's generated network on its query set, ``[T, Q, ...]``."""
        return self.outputs(episode).pred

    def adapted_params(self, episode: Episode, finetune_steps: int | None = None) -> Params:
        """Generated params, then ``finetune_steps`` (default: the model's) SGD steps of each
        task on its own support set. Detached from the hypernetwork. A ``ValueError`` names
        the tasks whose parameters are not finite (support values far outside the training
        range, e.g. ``support_y`` of 1e30, overflow inside the model)."""
        params = self._adapted(self.prepare(episode), finetune_steps)
        require_finite(params.values(), "generated parameters")
        return params

    def _adapted(self, episode: Episode, finetune_steps: int | None) -> Params:
        with torch.no_grad():
            params = self._generate(episode)
        steps = self.finetune_steps if finetune_steps is None else finetune_steps
        tuned = adapt(self.target, params, episode, self.kind, steps=steps,
                      lr=self.finetune_lr, keep_finite=True)
        return {n: p.detach() for n, p in tuned.items()}

    def predict(self, episode: Episode, finetune_steps: int | None = None) -> Tensor:
        """Evaluation path: generate (and optionally fine-tune) each task's network, then
        predict its query set, ``[T, Q, ...]``. Non-finite predictions are a ``ValueError``
        naming the tasks, never a silent NaN."""
        episode = self.prepare(episode)
        params = self._adapted(episode, finetune_steps)
        with torch.no_grad():
            out: Tensor = self.target(params, episode.query_x)
        require_finite([out], "predictions")
        return out

    def prepare_inference(self, *, compile: bool = False, fold: bool = True) -> FastPredictor:
        """The fast inference path: a callable equal to ``predict`` (no fine-tuning steps)
        without its per-call overhead — a lean validation at the boundary, then plain tensor
        operations (``hypermeta.fast``); ``compile=True`` also runs it through
        ``torch.compile``; ``fold=False`` keeps every affine layer (bit-identical outputs;
        see ``hypermeta.fast``). Call it after training: it holds a snapshot of the weights.

        Example:
            >>> fast = model.prepare_inference()
            >>> pred = fast(episode)          # == model.predict(episode)
        """
        from hypermeta.fast import FastPredictor

        return FastPredictor(self, compile=compile, fold=fold)

    @torch.no_grad()
    def generate(self, episode: Episode, finetune_steps: int | None = None) -> list[nn.Module]:
        """One standalone ``nn.Module`` per task (after the model's fine-tuning steps, if any),
        holding no reference to the hypernetwork."""
        params = self.adapted_params(episode, finetune_steps)
        count = next(iter(params.values())).shape[0]
        return [self.target.materialize({n: p[i] for n, p in params.items()})
                for i in range(count)]


def _check_class_head(head: ClassHead | RidgeHead | None, target: FunctionalTarget,
                      kind: TaskKind) -> None:
    if (head is None) != (target.class_head is None):
        raise ValueError("class_head= and a target built with class_head= go together; got "
                         f"class_head={type(head).__name__ if head else None} and target "
                         f"class_head={target.class_head!r}")
    if head is None:
        return
    if isinstance(head, RidgeHead) and kind.uses_classes:
        raise ValueError(f"a ridge head fits regression targets; got {kind.name!r} (use "
                         "ClassHead for class labels)")
    if isinstance(head, ClassHead) and not kind.uses_classes:
        raise ValueError(f"a class head needs a kind with class labels (classification); got "
                         f"{kind.name!r}")
    if head.feature_dim != target.feature_dim:
        raise ValueError(f"class_head.feature_dim ({head.feature_dim}) must equal the width "
                         f"the target's head reads ({target.feature_dim})")


def _class_problems(episode: Episode, descriptions: bool = False,
                    input_shape: tuple[int, ...] | None = None) -> tuple[list[str], int | None]:
    """What a per-class head cannot use (no support, non-integer labels, a missing class, too
    many classes; with descriptions: a descriptor that is not one input per class), and the
    episode's way count when it is valid."""
    y = episode.support_y
    if descriptions:
        desc = episode.descriptor
        shape = tuple(episode.query_x.shape[2:]) if input_shape is None else input_shape
        if (not isinstance(desc, Tensor) or not desc.is_floating_point() or desc.dim() < 2
                or tuple(desc.shape[2:]) != shape or desc.shape[1] < 1):
            got = list(desc.shape) if isinstance(desc, Tensor) else type(desc).__name__
            return [f"this class head reads class descriptions: descriptor must be float "
                    f"[T, ways, {', '.join(map(str, shape))}] (one encoded description per "
                    f"class); got {got}"], None
        ways = int(desc.shape[1])
        if y.shape[1] and (y.dim() != 2 or y.is_floating_point() or int(y.min()) < 0
                           or int(y.max()) >= ways):
            return [f"support_y must be integer class labels in 0..{ways - 1} (one per "
                    f"described class); got {list(y.shape)} {y.dtype}"], None
        if episode.ways is not None and episode.ways != ways:
            return [f"ways = {episode.ways} but the descriptor describes {ways} classes"], None
        return [], ways
    if y.shape[1] == 0:
        return ["support set is empty: the class head builds each class's weights from its "
                "support examples (or, with class_head.descriptions, from class "
                "descriptions)"], None
    if y.dim() != 2 or y.is_floating_point():
        return [f"support_y must be integer class labels [T, S] for a class head; got "
                f"{list(y.shape)} {y.dtype}"], None
    if int(y.min()) < 0:
        return ["support_y labels must be >= 0"], None
    try:
        ways = episode_ways(episode)
    except ValueError as err:
        return [str(err)], None
    present = torch.nn.functional.one_hot(y.long(), ways)
    if episode.support_mask is not None:
        present = present * episode.support_mask[..., None]
    missing = (present.sum(1) == 0).nonzero().tolist()
    if missing:
        return [f"classes without support examples (task, class): {missing[:10]}; every class "
                f"0..{ways - 1} needs one"], None
    return [], ways
