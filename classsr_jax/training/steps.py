"""The train state and the jitted steps: what one optimiser step and one validation step compute.

`train_step` trains `state.params` only (the frozen branches of joint training are constants to autodiff) on
this device's share of the batch and averages gradients, metrics and BatchNorm statistics over the data axis;
`eval_step` sums validation metrics over the valid tiles of a batch. The loop that runs them is `loop`.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from classsr_jax import parallel
from classsr_jax.data import input_pipeline
from classsr_jax.models.spec import ModelSpec
from classsr_jax.training import losses
from classsr_jax.training.losses import Objective


@flax.struct.dataclass
class TrainState:
    """step; `params`: what the optimiser updates; `frozen_params`: parameters held fixed (the branches during
    joint training); `batch_stats`: BatchNorm statistics (CARN); `opt_state`: Adam's moments."""

    step: jax.Array
    params: Any
    frozen_params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict[str, Any]:
        return merge_variables(self.params, self.frozen_params, self.batch_stats)


def merge_variables(params, frozen_params, batch_stats) -> dict[str, Any]:
    variables = {"params": {**frozen_params, **params}}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return variables


def split_params(params: dict[str, Any], trainable: tuple[str, ...] | None) -> tuple[dict, dict]:
    """(trained, frozen) top-level parameter groups; `trainable` None trains everything."""
    if trainable is None:
        return dict(params), {}
    missing = [k for k in trainable if k not in params]
    if missing:
        raise ValueError(f"no parameter group(s) {missing} in {sorted(params)}")
    return {k: v for k, v in params.items() if k in trainable}, {k: v for k, v in params.items() if k not in trainable}


def create_train_state(variables: dict[str, Any], tx: optax.GradientTransformation,
                       trainable: tuple[str, ...] | None = None) -> TrainState:
    params, frozen = split_params(dict(variables["params"]), trainable)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen_params=frozen,
        batch_stats=dict(variables.get("batch_stats", {}) or {}),
        opt_state=tx.init(params),
    )


def abstract_train_state(spec: ModelSpec, tx, trainable, mesh, lr_patch: int) -> TrainState:
    """The train state's shapes, dtypes and (replicated) shardings, for restoring a checkpoint."""
    abstract_vars = spec.abstract(tile=lr_patch)
    shapes = jax.eval_shape(lambda v: create_train_state(v, tx, trainable), abstract_vars)
    sharding = parallel.replicated(mesh)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def learning_rate_schedule(learning_rate: float, eta_min: float, cosine_period: int) -> optax.Schedule:
    """The original's CosineAnnealingLR_Restart with restart weight 1: update t = 1, 2, … uses
    lr(t) = eta_min + (lr − eta_min)·(1 + cos(π·t'/T))/2 with t' = ((t − 1) mod T) + 1, so lr(T) = eta_min
    and update T + 1 restarts at lr(1). The original steps the scheduler before the optimiser, so optax's
    count c (updates done so far) is update c + 1."""

    def schedule(count):
        t = (jnp.mod(count, cosine_period) + 1).astype(jnp.float32)
        return eta_min + (learning_rate - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / cosine_period))

    return schedule


def make_optimizer(stage_config, optimizer_config) -> optax.GradientTransformation:
    """Adam (β = (0.9, 0.99) in the paper, no weight decay) on the stage's cosine schedule."""
    schedule = learning_rate_schedule(stage_config.learning_rate, stage_config.eta_min, stage_config.cosine_period)
    return optax.adam(schedule, b1=optimizer_config.b1, b2=optimizer_config.b2, eps=optimizer_config.eps)


def _batch_psnr(sr, hr):
    """Mean per-sample PSNR (dB) on [0, 1], SR clipped, no border crop: a cheap training signal."""
    err = (jnp.clip(sr.astype(jnp.float32), 0.0, 1.0) - hr.astype(jnp.float32)) ** 2
    mse = jnp.maximum(jnp.mean(err, axis=(1, 2, 3)), 1e-10)
    return jnp.mean(-10.0 * jnp.log10(mse))


def _argmax_share(probs):
    """Each class's share of the tiles whose largest probability is that class's (what routing would pick)."""
    return jnp.mean(jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1]), axis=0)


def _forward_loss(model, variables, batch, objective: Objective, axis_name, batch_norm_train: bool):
    lr, hr = batch["lr"], batch["hr"]
    if not objective.is_classsr:
        if batch_norm_train and "batch_stats" in variables:
            sr, updated = model.apply(variables, lr, True, mutable=["batch_stats"])
            new_batch_stats = updated["batch_stats"]
        else:
            sr = model.apply(variables, lr, False)
            new_batch_stats = variables.get("batch_stats", {})
        l1 = losses.l1_loss(sr, hr, objective.pixel_range)
        loss = objective.total(l1)
        return loss, ({"loss": loss, "l1": l1, "psnr": _batch_psnr(sr, hr)}, new_batch_stats)
    # Branches in inference mode (BatchNorm on stored statistics): a deliberate fix of the original.
    mixed, probs = model.apply(variables, lr, False)
    loss, terms = losses.classsr_loss(
        mixed,
        hr,
        probs,
        l1_weight=objective.l1_weight,
        class_loss_weight=objective.class_loss_weight,
        average_loss_weight=objective.average_loss_weight,
        pixel_range=objective.pixel_range,
        axis_name=axis_name,
    )
    probs = probs.astype(jnp.float32)
    metrics = {
        "loss": loss,
        **terms,
        "psnr": _batch_psnr(mixed, hr),
        "prob_mass": jnp.mean(probs, axis=0),
        "argmax_share": _argmax_share(probs),
    }
    return loss, (metrics, variables.get("batch_stats", {}))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model,
    tx: optax.GradientTransformation,
    objective: Objective,
    axis_name: str | None = parallel.DATA_AXIS,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on this device's share of the batch; gradients, metrics and BatchNorm statistics are
    averaged over `axis_name` (None: a single device, no collectives). The metrics include the global norm of
    the averaged gradient (`grad_norm`), which the loop checks for NaN and infinity.

    Only `state.params` is differentiated: for joint training that is the classifier, so the frozen branches'
    outputs are constants to autodiff and their backward pass is never built.
    """
    batch = input_pipeline.finish_batch(batch, jnp)  # raw uint8 tiles are made float, and recoloured, here
    params = state.params
    if axis_name is not None:
        # Per-device gradients, as under pmap. Without the cast, shard_map would treat the replicated
        # parameters as one value and sum their gradients over devices before our pmean.
        params = jax.lax.pcast(params, axis_name, to="varying")
    batch_norm_train = not objective.is_classsr and bool(state.batch_stats)

    def loss_fn(params):
        variables = merge_variables(params, state.frozen_params, state.batch_stats)
        return _forward_loss(model, variables, batch, objective, axis_name, batch_norm_train)

    (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
        if batch_norm_train:
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
    metrics["grad_norm"] = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, metrics


def eval_step(
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    *,
    model,
    objective: Objective,
    axis_name: str | None = parallel.DATA_AXIS,
) -> dict[str, jax.Array]:
    """Sums over this batch's valid tiles (`batch['weight']` 1, padding 0) for validation metrics:
    count, l1_sum, psnr_sum and, for ClassSR, class_loss_sum, mass (Σ p per class) and argmax_count."""
    lr, hr, weight = batch["lr"], batch["hr"], batch["weight"].astype(jnp.float32)
    per_sample_l1 = jax.vmap(lambda s, h: losses.l1_loss(s[None], h[None], objective.pixel_range))
    if not objective.is_classsr:
        sr = model.apply(variables, lr, False)
        sums = {"l1_sum": jnp.sum(weight * per_sample_l1(sr, hr))}
    else:
        sr, probs = model.apply(variables, lr, False)
        probs = probs.astype(jnp.float32)
        per_sample_class = jax.vmap(lambda p: losses.class_loss(p[None]))(probs)
        argmax = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1])
        sums = {
            "l1_sum": jnp.sum(weight * per_sample_l1(sr, hr)),
            "class_loss_sum": jnp.sum(weight * per_sample_class),
            "mass": jnp.sum(weight[:, None] * probs, axis=0),
            "argmax_count": jnp.sum(weight[:, None] * argmax, axis=0),
        }
    err = (jnp.clip(sr.astype(jnp.float32), 0.0, 1.0) - hr) ** 2
    psnr = -10.0 * jnp.log10(jnp.maximum(jnp.mean(err, axis=(1, 2, 3)), 1e-10))
    sums["psnr_sum"] = jnp.sum(weight * psnr)
    sums["count"] = jnp.sum(weight)
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums
