"""BERT-Base pretraining on a TPU v5e-32 slice (32 chips, 16 GB HBM each): bf16, data parallel.

Run (on every host of the slice, same command):
  bertjax pretrain --config configs/accel_tpu_v5e_base.py --workdir gs://BUCKET/runs/base_v5e

The BERT recipe (batch 256, 1M steps, 90% at S=128 / P=20, 10% at S=512 / P=80): 8 sequences
per chip, which keeps the S=512 phase inside 16 GB without rematerialisation. bfloat16 matmuls
accumulate in f32 on the MXU; params, Adam moments, softmax and LayerNorm stay f32.
Expected throughput: docs/performance.md, "Accelerators, on paper".
"""
from bertjax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("base")
  c.model.dtype = "bfloat16"
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optim.learning_rate = 0.0001
  c.optim.warmup_steps = 10_000
  c.train.global_batch_size = 256       # 8 per chip
  c.train.num_steps = 1_000_000
  c.train.phase2_start = 900_000
  c.train.phase2_max_seq_length = 512
  c.train.phase2_max_predictions_per_seq = 80
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.checkpoint.every_steps = 10_000
  c.mesh.data = -1                      # all 32 chips
  return c
