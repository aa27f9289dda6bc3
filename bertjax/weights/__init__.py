"""Weights in and out of bertjax: everything that reads or writes params outside a checkpoint.

  bundle.py    the bertjax bundle (params.safetensors + model config + tokenizer): its format
  interop/     Hugging Face BERT directories <-> param trees (safetensors), per transformers class
  export.py    `bertjax export`: any workdir / bundle / HF dir -> a bundle or its HF class + card
  atomic.py    directories written atomically (an export is complete or absent)
"""
