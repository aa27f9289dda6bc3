"""Input pipeline: corpus -> tokenizer -> prepared shards -> pairs / packed rows + masks on the fly.

  corpus.py     readers (bert / prose / auto / tfds), sentence splitting, encodings
  records.py    record files: JSONL (.gz/.zst), Parquet, Arrow / datasets folders, in chunks
  tokenizer.py  SentencePiece (fixed special ids) and WordPiece vocab.txt behind one interface
  prepare.py    `bertjax prepare`: tokenise once into ArrayRecord shards + manifest.json
  stream.py     prepare's tasks, worker processes, bounded read-ahead
  shards.py     the on-disk layout and random access to it
  pairs.py      BERT's segment-pair algorithm, planned per epoch from sentence lengths
  packing.py    MLM-only rows packed to full length from the epoch's document stream
  masking.py    dynamic (whole-word) MLM masking for a batch, vectorised
  rng.py        counter-based randomness: hashes of (seed, epoch, example index)
  pipeline.py   the grain iterator the trainer uses (make_pretrain_iterator)
(`bertjax tokenizer train` and `bertjax prepare` parse their flags in bertjax/cli/data.py.)
"""
