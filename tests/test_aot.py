"""Ahead-of-time compiles of the real train step for big meshes: no data, no accelerator.

`make_train_step(...).lower(abstract_state, abstract_batch).compile()` on the 8 virtual CPU
devices catches sharding and shape errors of a multi-device run before any hardware is booked,
and the compiled FLOP count checks the model does the work the FLOP formula (used for MFU and
the README's accelerator estimates) says it does.
"""
import jax
import pytest

from bertjax import sharding as shd
from bertjax.config import base_config, load_config, model_config
from bertjax.optim import make_optimizer
from bertjax.train.metrics import bert_pretraining_flops
from bertjax.train.pretrain import batch_spec, pretrain_task
from bertjax.train.state import abstract_state
from bertjax.train.step import make_train_step

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def compile_train_step(cfg, phase: int = 0):
  """(compiled step, mesh) for cfg's global batch of `phase`, from shapes only."""
  mesh = shd.make_mesh(cfg.mesh)
  task = pretrain_task(cfg, synthetic=True)
  tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
  spec = batch_spec(cfg, phase)
  abstract, shardings = abstract_state(task.init_params, tx, cfg.train.seed, spec, mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shd.batch_sharding(mesh))
           for k, v in spec.items()}
  step = make_train_step(task.loss_fn, tx, mesh, shardings, schedule=schedule,
                         grad_accum_steps=cfg.train.grad_accum_steps,
                         loss_denominators=task.loss_denominators)
  return step.lower(abstract, batch).compile(), mesh


def compiled_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_aot_tiny_on_data_x_fsdp_mesh():
  """4 x 2 (data x fsdp) mesh: batch split 8 ways, params sharded over fsdp; compiles."""
  cfg = base_config()
  cfg.model = model_config("tiny")
  cfg.model.dtype = "bfloat16"
  cfg.mesh.data, cfg.mesh.fsdp = 4, 2
  cfg.train.global_batch_size = 32
  compiled, mesh = compile_train_step(cfg)
  assert mesh.shape == {"data": 4, "fsdp": 2}
  state_in, batch_in = compiled.input_shardings[0]
  ids = batch_in["input_ids"]
  assert ids.spec[0] == ("data", "fsdp") and ids.num_devices == 8
  word = state_in.params["bert"]["embeddings"]["word_embeddings"]
  assert "fsdp" in tuple(word.spec)  # [V, H] split over the fsdp axis (ZeRO-3 style)
  assert compiled.memory_analysis() is not None


@pytest.mark.slow
def test_aot_bert_large_global_batch_256_on_8_devices():
  """configs/accel_h100x8_large.py as is: BERT-large, global batch 256 over 8 devices."""
  # attention_impl=cudnn serves deterministic (eval) calls only and needs a GPU to trace; the
  # training step runs the XLA attention either way.
  cfg = load_config(str(CONFIGS / "accel_h100x8_large.py"), ["--config.model.attention_impl=einsum"])
  compiled, mesh = compile_train_step(cfg)
  assert mesh.devices.size == 8
  _, batch_in = compiled.input_shardings[0]
  assert batch_in["input_ids"].shard_shape((256, 128)) == (32, 128)  # 32 sequences per device
  # The compiled program does the model FLOPs the formula promises (per device x 8), give or
  # take the element-wise work: a full [B, S, V] MLM head or a doubled backward would not fit.
  expected = bert_pretraining_flops(cfg.model, 256, 128, 20)
  ratio = compiled_flops(compiled) * 8 / expected
  assert 0.95 < ratio < 1.25, ratio
