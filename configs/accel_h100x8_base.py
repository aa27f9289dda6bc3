"""BERT-Base pretraining on one 8x H100 (80 GB) host: bf16 compute, data parallel over 8 GPUs.

Run:
  bertjax pretrain --config configs/accel_h100x8_base.py --workdir runs/base_h100

The BERT recipe (batch 256, 1M steps, 90% at S=128 / P=20, 10% at S=512 / P=80) with the
accelerator settings: bfloat16 matmuls accumulating in f32 (params, Adam moments, softmax and
LayerNorm stay f32), cuDNN flash attention for evaluation. 32 sequences per GPU fit 80 GB at
S=512 without rematerialisation. tests/test_aot.py compiles this step for the 8-device mesh.
Expected throughput: docs/performance.md, "Accelerators, on paper".
"""
from bertjax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("base")
  c.model.dtype = "bfloat16"
  c.model.attention_impl = "cudnn"      # jax.nn.dot_product_attention (used when deterministic)
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optim.learning_rate = 0.0001
  c.optim.warmup_steps = 10_000
  c.train.global_batch_size = 256       # 32 per GPU
  c.train.num_steps = 1_000_000
  c.train.phase2_start = 900_000
  c.train.phase2_max_seq_length = 512
  c.train.phase2_max_predictions_per_seq = 80
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.train.peak_tflops = 989.0           # H100 SXM dense bf16, for the logged MFU
  c.checkpoint.every_steps = 10_000
  c.mesh.data = 8
  return c
