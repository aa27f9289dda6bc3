"""Checkpoints: exact resume, preemption safety, restore onto any mesh, params for export.

This docstring is the checkpoint format; the code is in
  checkpointer.py   `Checkpointer`: the Orbax manager, save, restore, corruption fallback
  manifest.py       the CRC32 manifest and the evidence that a checkpoint is damaged
  compat.py         the differences that refuse a resume (config values, tokenizer, state)
  data_state.py     the data-iterator item, one JSON file per process
  params.py         `restore_params`: the params of one checkpoint, without the optimizer

Layout of a workdir (WORKDIR/checkpoints is an Orbax `CheckpointManager` directory):

  WORKDIR/checkpoints/<step>/state/     the train-state pytree (params, opt_state, step, rng ...)
  WORKDIR/checkpoints/<step>/data/      each process's data-iterator state, process_I-of-N.json
  WORKDIR/checkpoints/<step>/meta/      JSON: config, tokenizer identity, bertjax version, metrics
  WORKDIR/checkpoints/<step>/manifest.json  size + CRC32 of every file, written before the commit
  WORKDIR/tokenizer/<sha256[:12]>/      a copy of the tokenizer files, so export works after the
                                        original moves
  WORKDIR/checkpoints_corrupt/<step>/   a latest checkpoint found unreadable, moved aside

Resume order (what `bertjax pretrain` does when it starts; the trainer follows it):
  1. the latest *complete and readable* checkpoint in WORKDIR/checkpoints — params, optimizer
     state, step, RNG and the data position, so the run continues bit-for-bit as if it had never
     stopped. A latest checkpoint that fails its manifest or does not restore is moved to
     WORKDIR/checkpoints_corrupt/ with a warning and the previous one is used;
  2. else `--init-from PATH` (a workdir, one checkpoint step dir, a bertjax bundle or a Hugging
     Face dir): params only, a fresh optimizer and step 0;
  3. else a fresh initialisation from `train.seed`.
Before (1) restores anything, the saved config and tokenizer are compared with the current ones
(the fields of `bertjax.config.RESUME_KEYS`, handed in by the trainer) and every difference is
named in one `UserError`.

Atomicity: Orbax writes each step into `<step>.orbax-checkpoint-tmp-*` and renames it when every
item (and our manifest) is written, so a save killed at any moment never becomes the latest;
leftover tmp dirs are ignored and removed at the next start.

Asynchrony: `save()` blocks only while device arrays are copied to host memory (and while the
previous save, if still writing, finishes); the files are written by a background thread while
training continues. `wait()` blocks until the last save is committed.

Preemption: `bertjax.train.preemption.PreemptionGuard` turns SIGTERM/SIGINT into a flag; the
loop asks `guard.should_stop(step)` every step, and every process gets the same answer at the
same step (an all-gather every `sync_every` steps on several processes), so all save the same
step.
"""
from bertjax.checkpoint.checkpointer import (CHECKPOINT_DIR, CORRUPT_DIR, TOKENIZER_DIR,
                                            CheckpointReadError, Checkpointer,
                                            CheckpointWriteError)
from bertjax.checkpoint.data_state import DataStateHandler
from bertjax.checkpoint.manifest import (MANIFEST, CorruptCheckpoint, find_damage,
                                         verify_manifest, write_manifest)
from bertjax.checkpoint.params import restore_params

__all__ = ["CHECKPOINT_DIR", "CORRUPT_DIR", "TOKENIZER_DIR", "MANIFEST", "Checkpointer",
           "CheckpointReadError", "CheckpointWriteError", "CorruptCheckpoint", "DataStateHandler",
           "find_damage", "restore_params", "verify_manifest", "write_manifest"]
