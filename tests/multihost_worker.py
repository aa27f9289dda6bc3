"""One process of the 2-process test (tests/test_train_multihost.py); also importable for its
config. Run: python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT_JSON

Each process sees 4 CPU devices, joins the other over 127.0.0.1 (gloo collectives), feeds only
its own rows of every global batch, and runs the real trainer for 5 steps."""
import json
import os
import sys


def tiny_cfg():
  from bertjax.config import base_config, model_config
  c = base_config()
  c.model = model_config("tiny", vocab_size=96, max_position_embeddings=64)
  m = c.model
  m.hidden_size, m.num_attention_heads, m.intermediate_size, m.num_hidden_layers = 32, 2, 64, 1
  c.data.max_seq_length, c.data.max_predictions_per_seq = 16, 4
  c.train.global_batch_size, c.train.num_steps, c.train.log_every = 32, 5, 1
  c.train.eval_every, c.train.eval_batches = 5, 2
  c.optim.learning_rate, c.optim.warmup_steps = 1e-2, 2
  c.checkpoint.every_steps = 0
  return c


def main(argv):
  pid, n, port, workdir, out = int(argv[0]), int(argv[1]), argv[2], argv[3], argv[4]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ["JAX_PLATFORMS"] = "cpu"
  from bertjax import distributed
  distributed.initialize(f"127.0.0.1:{port}", n, pid)
  import jax
  from bertjax.train.loop import train
  from bertjax.train.pretrain import pretrain_task
  assert jax.process_count() == n and jax.device_count() == 4 * n
  cfg = tiny_cfg()
  task = pretrain_task(cfg, synthetic=True)
  first_rows = next(iter(task.train_iter.__class__(cfg, 0, cfg.train.seed, pid, n)))
  s = train(task, cfg, workdir, progress=False)
  with open(out, "w") as f:
    json.dump({"steps": s["steps"], "eval": s["eval"], "devices": s["devices"],
               "processes": s["processes"], "local_rows": int(first_rows["input_ids"].shape[0]),
               "compiles": s["compiles"]}, f)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
