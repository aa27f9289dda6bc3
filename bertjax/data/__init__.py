"""Input pipeline: corpus -> tokenizer -> prepared shards -> BERT pairs + masks on the fly.

  corpus.py     readers (bert / prose / auto / tfds), sentence splitting, encodings
  records.py    record files: JSONL (.gz/.zst), Parquet, Arrow / datasets folders, in chunks
  tokenizer.py  SentencePiece (fixed special ids) and WordPiece vocab.txt behind one interface
  prepare.py    `bertjax prepare`: tokenise once into ArrayRecord shards + manifest.json
  stream.py     prepare's tasks, worker processes, bounded read-ahead
  shards.py     the on-disk layout and random access to it
  pairs.py      BERT's segment-pair algorithm, planned per epoch from sentence lengths
  masking.py    dynamic (whole-word) MLM masking for a batch, vectorised
  rng.py        counter-based randomness: hashes of (seed, epoch, example index)
  pipeline.py   the grain iterator the trainer uses (make_pretrain_iterator)
  cli.py        `bertjax tokenizer train`, `bertjax prepare`
"""
