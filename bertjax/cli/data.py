"""`bertjax tokenizer train ...` and `bertjax prepare ...`."""
from __future__ import annotations

import argparse
import os

from bertjax.cli.common import split_overrides
from bertjax.errors import UserError


def tokenizer_main(argv: list[str]) -> int:
  ap = argparse.ArgumentParser(
      prog="bertjax tokenizer",
      description="Train a SentencePiece tokenizer with [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.")
  sub = ap.add_subparsers(dest="cmd", required=True)
  tr = sub.add_parser("train", help="train a SentencePiece model on text files")
  tr.add_argument("--input", required=True, help="comma-separated globs of text files")
  tr.add_argument("--out", required=True, help="output prefix: writes PREFIX.model, PREFIX.vocab")
  tr.add_argument("--vocab-size", type=int, default=8000)
  tr.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
  tr.add_argument("--cased", action="store_true", help="keep case (default: lowercase)")
  tr.add_argument("--corpus-format", default="auto", choices=["auto", "bert", "prose"])
  tr.add_argument("--input-sentence-size", type=int, default=2_000_000,
                  help="sentences SentencePiece samples for training")
  args = ap.parse_args(argv)
  from bertjax.data.tokenizer import load_tokenizer, train_sentencepiece
  path = train_sentencepiece(args.input.split(","), args.out, args.vocab_size, args.model_type,
                             lowercase=not args.cased, corpus_format=args.corpus_format,
                             input_sentence_size=args.input_sentence_size)
  tok = load_tokenizer(path)
  print(f"wrote {path} ({tok.vocab_size} pieces, {args.model_type}, "
        f"{'uncased' if tok.do_lower_case else 'cased'}); special ids: [PAD]={tok.pad_id} "
        f"[UNK]={tok.unk_id} [CLS]={tok.cls_id} [SEP]={tok.sep_id} [MASK]={tok.mask_id}")
  return 0


def prepare_main(argv: list[str]) -> int:
  ap = argparse.ArgumentParser(
      prog="bertjax prepare",
      description="Tokenise the corpus of a config once into ArrayRecord shards + manifest.json.")
  ap.add_argument("--config", required=True, help="config file (configs/*.py)")
  ap.add_argument("--out", default="", help="output dir (default: data.prepared_dir)")
  ap.add_argument("--workers", type=int, default=-1,
                  help="tokenising processes (default: data.num_workers; 0 = in-process)")
  args, rest = ap.parse_known_args(argv)
  overrides = split_overrides(rest, "prepare")
  from bertjax.config import load_config
  from bertjax.data.prepare import format_summary, prepare_corpus
  cfg = load_config(args.config, overrides)
  out = args.out or cfg.data.prepared_dir
  if not out:
    raise UserError("no output dir: pass --out DIR or set data.prepared_dir")
  workers = cfg.data.num_workers if args.workers < 0 else args.workers
  manifest = prepare_corpus(cfg.data, out, num_workers=workers)
  print(format_summary(manifest))
  print(f"manifest: {os.path.join(out, 'manifest.json')}")
  return 0
