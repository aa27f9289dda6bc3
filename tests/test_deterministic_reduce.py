"""train.deterministic_reduce: the per-device, device-ordered sums give the same training as
XLA's all-reduce (up to float rounding; without dropout, whose keys are per device there),
with and without gradient accumulation, compiled once. That 2 x 4 == 1 x 8 devices bitwise is
tested across processes in tests/test_elastic_resume.py."""
import numpy as np
import pytest

from multihost_worker import tiny_cfg


@pytest.mark.parametrize("accum", [1, 2])
def test_deterministic_reduce_matches_the_all_reduce(tmp_path, accum):
  from bertjax.train.loop import train
  from bertjax.train.pretrain import pretrain_task
  out = {}
  for det in (False, True):
    cfg = tiny_cfg()
    cfg.model.hidden_dropout_prob = cfg.model.attention_probs_dropout_prob = 0.0
    cfg.train.num_steps, cfg.train.eval_every, cfg.train.grad_accum_steps = 3, 0, accum
    cfg.train.deterministic_reduce = det
    s = train(pretrain_task(cfg, synthetic=True), cfg, str(tmp_path / f"{det}"), progress=False)
    assert s["compiles"] == {0: 1}
    out[det] = s
  a, b = out[False], out[True]
  for k in ("loss", "mlm_loss", "nsp_loss", "grad_norm"):
    np.testing.assert_allclose(b["train"][k], a["train"][k], rtol=1e-5)
  import jax
  for x, y in zip(jax.tree.leaves(a["state"].params), jax.tree.leaves(b["state"].params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
