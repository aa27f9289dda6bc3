"""`bertjax <command> ...` with every float32 of the training path made float64: a diagnostic.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/float64_run.py finetune --task squad ...

bertjax computes in float32 (or bfloat16) by design and has no float64 mode. To tell float32
rounding from an arithmetic difference between bertjax and transformers, both are run in
float64 (benchmarks/finetune_compare.py --float64; the peer calls model.double()): if the two
float64 runs agree to ~1e-10 while the float32 runs drift apart, the drift is rounding. Here
jax_enable_x64 is switched on, the modules of the model, the heads and the losses see a
jax.numpy whose `float32` is float64 (their casts, accumulations and dtype_of then use it), and
the warm-start weights are placed on the device as float64 (the head's fresh parameters already
are: Flax initialisers draw in the default float dtype, float64 under x64). Attention takes the
explicit einsum path (the same function when dropout is off): jax.nn.dot_product_attention
computes its softmax in float32 whatever its inputs; and the linear learning-rate schedule is
computed here in float64 (optax's casts the step count to float32). Nothing here is imported by the package;
tests/test_parity_features.py checks the traced training step for any float32 left.
"""
from __future__ import annotations

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


class _Float64Numpy:
  """jax.numpy, except that `float32` names float64."""

  def __init__(self, jnp):
    self._jnp = jnp
    self.float32 = jnp.float64

  def __getattr__(self, name):
    return getattr(self._jnp, name)


def _linear_schedule64(ocfg, num_steps: int):
  """bertjax.optim.make_schedule's linear warmup and decay, in float64 (optax's schedules
  cast the step count to float32)."""
  import jax.numpy as jnp
  from bertjax import optim
  if ocfg.schedule != "linear":
    raise SystemExit(f"float64_run: optim.schedule={ocfg.schedule!r}; only linear is mirrored")
  peak, end = ocfg.learning_rate, ocfg.end_learning_rate
  warmup = optim.warmup_steps(ocfg, num_steps)
  decay = max(num_steps - warmup, 1)

  def schedule(count):
    k = jnp.asarray(count, jnp.float64)
    down = peak + (end - peak) * jnp.clip(k - warmup, 0, decay) / decay
    return jnp.where(k < warmup, peak * k / max(warmup, 1), down)
  return schedule


def enable() -> None:
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np
  from bertjax import heads, losses, model, optim
  from bertjax.tasks import families
  from bertjax.train import state, step
  shim = _Float64Numpy(jnp)
  for mod in (model, heads, losses, families, step):
    mod.jnp = shim
  model.use_fused_attention = lambda config, deterministic: False
  optim.make_schedule = _linear_schedule64
  place = state.place

  def place64(x, sharding):
    x = np.asarray(x)
    return place(x.astype(np.float64) if x.dtype == np.float32 else x, sharding)
  state.place = place64


def main(argv=None) -> int:
  enable()
  from bertjax.cli import main as cli_main
  return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  sys.exit(main())
