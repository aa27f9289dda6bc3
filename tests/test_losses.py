"""bertjax.losses: the argmax-free accuracy equals argmax accuracy, ties included."""
import jax.numpy as jnp
import numpy as np

from bertjax.losses import weighted_accuracy


def test_weighted_accuracy_equals_argmax_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(100):
    v = int(rng.integers(2, 12))
    logits = rng.integers(-2, 3, (5, 7, v)).astype(np.float32)   # small ints: many ties
    labels = rng.integers(0, v, (5, 7))
    w = rng.integers(0, 2, (5, 7)).astype(np.float32)
    got, den = weighted_accuracy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(w))
    assert float(got) == float(((np.argmax(logits, -1) == labels) * w).sum())
    assert float(den) == float(w.sum())
  # a tie at a lower index than the label is a miss, at a higher index a hit (first argmax)
  logits = jnp.array([[1.0, 3.0, 3.0], [1.0, 3.0, 3.0]])
  got, _ = weighted_accuracy(logits, jnp.array([2, 1]), jnp.ones(2))
  assert float(got) == 1.0
