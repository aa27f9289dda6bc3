"""BERT-Large pretraining on a TPU v4-32 slice (16 chips, 32 GB HBM each): bf16, FSDP x data.

Run (on every host of the slice, same command):
  bertjax pretrain --config configs/accel_tpu_v4_large.py --workdir gs://BUCKET/runs/large_v4

The BERT recipe (batch 256, 1M steps, 90% at S=128 / P=20, 10% at S=512 / P=80): 16 sequences
per chip. Parameters and Adam moments are sharded over a 2-way fsdp axis (ZeRO-3 style: 5.4 GB
of f32 state becomes 2.7 GB per chip) to leave room for S=512 activations without remat.
Expected throughput: docs/performance.md, "Accelerators, on paper".
"""
from bertjax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("large")
  c.model.dtype = "bfloat16"
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optim.learning_rate = 0.0001
  c.optim.warmup_steps = 10_000
  c.train.global_batch_size = 256       # 16 per chip
  c.train.num_steps = 1_000_000
  c.train.phase2_start = 900_000
  c.train.phase2_max_seq_length = 512
  c.train.phase2_max_predictions_per_seq = 80
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.checkpoint.every_steps = 10_000
  c.mesh.data = -1                      # 8 on a v4-32 slice (16 chips / fsdp 2)
  c.mesh.fsdp = 2
  return c
