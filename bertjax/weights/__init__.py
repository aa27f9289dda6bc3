"""Weights in and out of bertjax: everything that reads or writes params outside a checkpoint.

  bundle.py    the bertjax bundle (params.safetensors + model config + tokenizer): the format
  export.py    `bertjax export`: any workdir / bundle / HF dir -> a bundle or its HF class + card
"""
