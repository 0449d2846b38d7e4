"""optax optimisers and learning-rate schedules from the config."""

import ml_collections
import optax


def schedule(learning_rate: float, kind: str, num_steps: int, warmup_steps: int = 0):
    """A learning-rate schedule: "constant", "cosine" (to 0) or "poly" (power 0.9, DeepLab's)."""
    warmup_steps = min(warmup_steps, max(num_steps - 1, 0))
    decay_steps = max(num_steps - warmup_steps, 1)
    if kind == "constant":
        main = optax.constant_schedule(learning_rate)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(learning_rate, decay_steps)
    elif kind == "poly":
        main = optax.polynomial_schedule(learning_rate, 0.0, 0.9, decay_steps)
    else:
        raise ValueError(f"schedule must be constant, cosine or poly, got {kind!r}")
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def segmentor_optimizer(
    opt: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
    """The segmentor's optimiser (config.optimizer)."""
    lr = schedule(opt.learning_rate, opt.schedule, num_steps, opt.warmup_steps)
    if opt.name == "adamw":
        return optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
    if opt.name == "adam":
        return optax.adam(lr, b1=opt.b1, b2=opt.b2)
    if opt.name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(opt.weight_decay), optax.sgd(lr, momentum=opt.momentum)
        )
    raise ValueError(f"optimizer.name must be adamw, adam or sgd, got {opt.name!r}")


def critic_optimizer(
    critic: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
    """The critic's optimiser: Adam as SegAN (config.critic), decayed by an optax schedule.

    SegAN decayed its learning rate by re-creating Adam, which reset the moments; a schedule
    keeps them.
    """
    lr = schedule(critic.learning_rate, critic.schedule, num_steps * critic.steps_per_update)
    return optax.adam(lr, b1=critic.b1, b2=critic.b2)
