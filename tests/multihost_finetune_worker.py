"""One process of the 2-process fine-tuning test (tests/test_tasks_multihost.py).
Run: python tests/multihost_finetune_worker.py PROCESS_ID NUM_PROCESSES PORT DATA VOCAB WORKDIR OUT

Each process sees 4 CPU devices, joins the other over 127.0.0.1 (gloo), and runs
`bertjax.tasks.finetune.run` on a tiny TSV task: training, dev evaluation and predictions."""
import json
import os
import sys


def finetune_cfg(data: str, vocab: str):
  from bertjax.tasks import finetune
  cfg = finetune.default_config()
  m = cfg.model
  m.vocab_size, m.hidden_size, m.num_hidden_layers = 32, 32, 1
  m.num_attention_heads, m.intermediate_size, m.max_position_embeddings = 2, 64, 32
  cfg.data.tokenizer = vocab
  cfg.optim.learning_rate = 5e-3
  cfg.train.global_batch_size = 16
  cfg.train.log_every = 1
  cfg.checkpoint.every_steps = 1000
  f = cfg.finetune
  f.task, f.data, f.max_seq_length, f.eval_batch_size, f.num_epochs = "tsv", data, 16, 16, 2.0
  return cfg


def main(argv):
  pid, n, port, data, vocab, workdir, out = argv
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ["JAX_PLATFORMS"] = "cpu"
  from bertjax import distributed
  distributed.initialize(f"127.0.0.1:{port}", int(n), int(pid))
  import jax
  from bertjax.tasks import finetune
  assert jax.process_count() == int(n) and jax.device_count() == 4 * int(n)
  s = finetune.run(finetune_cfg(data, vocab), workdir, progress=False)
  with open(out, "w") as fh:
    json.dump({"steps": s["steps"], "results": s["results"], "processes": s["processes"],
               "predictions": s["predictions"]}, fh)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
