"""benchmarks/matmul_bound.py: the matmul skeleton does the model's matmul work, no more and no
less: XLA's FLOP count of its compiled forward + backward matches the model-FLOPs formula MFU
divides by (bert_pretraining_flops, which also counts the tiny pooler and NSP matmuls the
skeleton leaves out). Budget: ~3 s."""
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/
from benchmarks.matmul_bound import init_skeleton, skeleton_loss  # noqa: E402
from bertjax.config import model_config  # noqa: E402
from bertjax.train.metrics import bert_pretraining_flops  # noqa: E402


def test_skeleton_flops_match_the_model_flops():
  c = model_config("tiny", vocab_size=1000)
  c.dtype = "bfloat16"
  params, x, r = init_skeleton(c, 4, 32, 5)
  f = jax.jit(jax.value_and_grad(lambda p, x: skeleton_loss(p, x, r, c), argnums=(0, 1)))
  cost = f.lower(params, x).compile().cost_analysis()
  cost = cost if isinstance(cost, dict) else cost[0]
  model = bert_pretraining_flops(c, 4, 32, 5)
  assert abs(cost["flops"] / model - 1) < 0.02, (cost["flops"], model)
  loss, (g, gx) = f(params, x)
  assert gx.shape == x.shape and g["word"].shape == params["word"].shape
  assert all(bool(jax.numpy.any(l["q"] != 0)) for l in g["layers"])  # every layer in the chain
