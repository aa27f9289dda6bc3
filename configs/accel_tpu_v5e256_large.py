"""BERT-Large pretraining on a TPU v5e-256 pod (256 chips, 16 GB HBM each) at global batch 4,096.

Run (on every host of the pod, same command):
  bertjax pretrain --config configs/accel_tpu_v5e256_large.py --workdir gs://BUCKET/runs/large_v5e

16 sequences per chip at S=128, data parallel; LAMB, the optimizer You et al. 2019 used for
large-batch BERT (its learning rate here is a starting point to tune, not a measured optimum). Check it before booking the pod:
  bertjax compile --config configs/accel_tpu_v5e256_large.py --target v5e-256
docs/targets.md has what the TPU compiler measured: data only 6.01, fsdp 16 2.19 GiB a chip.
"""
from bertjax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("large")
  c.model.dtype = "bfloat16"
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optim.name = "lamb"
  c.optim.learning_rate = 0.002         # a starting point for LAMB at batch 4k: tune it
  c.optim.warmup_steps = 2_000
  c.train.global_batch_size = 4096      # 16 per chip
  c.train.num_steps = 31_250            # 128M sequences (BERT: 1M steps x 256 = 256M)
  c.train.log_every = 100
  c.train.eval_every = 2_000
  c.checkpoint.every_steps = 2_000
  c.mesh.data = -1                      # all 256 chips
  c.mesh.fsdp = 1
  return c
