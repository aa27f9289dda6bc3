"""Fine-tuning tasks: readers per format, featurizers, and the registry of named tasks.

Importing this package registers the built-in tasks (GLUE, generic TSV/CSV/JSONL, CoNLL, SQuAD).
The readers and the registry import no JAX, so the PyTorch peer benchmark can share them.
"""
from bertjax.tasks import conll, glue, squad  # noqa: F401  (register their tasks)
