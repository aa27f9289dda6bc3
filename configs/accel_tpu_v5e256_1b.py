"""A 1.28B-parameter BERT encoder (L=24, H=2048, A=16, I=8192) on a TPU v5e-256 pod, FSDP x data.

Run (on every host of the pod, same command):
  bertjax pretrain --config configs/accel_tpu_v5e256_1b.py --workdir gs://BUCKET/runs/1b_v5e

Global batch 4,096 at S=128, bf16 compute. Its f32 params and Adam moments are 15 GB: replicated
they alone fill a 16 GB chip, so they are split 16 ways over the fsdp axis (ZeRO-3 style; 256
chips = 16 data x 16 fsdp). Check it before booking the pod:
  bertjax compile --config configs/accel_tpu_v5e256_1b.py --target v5e-256
docs/targets.md, "FSDP where it matters": why data-only cannot fit, and what is compiled.
"""
from bertjax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("large")
  c.model.hidden_size = 2048
  c.model.num_attention_heads = 16
  c.model.intermediate_size = 8192
  c.model.num_hidden_layers = 24
  c.model.dtype = "bfloat16"
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optim.name = "lamb"
  c.optim.learning_rate = 0.001
  c.optim.warmup_steps = 2_000
  c.train.global_batch_size = 4096      # 16 per chip
  c.train.num_steps = 31_250
  c.train.log_every = 100
  c.train.eval_every = 2_000
  c.checkpoint.every_steps = 2_000
  c.mesh.data = -1                      # 16 on a v5e-256 (256 chips / fsdp 16)
  c.mesh.fsdp = 16
  return c
