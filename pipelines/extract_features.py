"""Write encoder features for text: a thin wrapper over `bertjax extract-features`.

  python pipelines/extract_features.py --init runs/demo/export --input sentences.txt \
      --out runs/features --layers -1,-2 --pool mean

The logic lives in bertjax.features; this script only forwards its flags.
"""
import sys

from bertjax.cli import main

if __name__ == "__main__":
  sys.exit(main(["extract-features"] + sys.argv[1:]))
