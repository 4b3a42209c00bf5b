"""Training-set building: gather, clean, mask personal data, deduplicate, split, validate, cost, write.

``build_dataset(db, settings)`` is the pipeline (``build.py`` explains each step);
``import_base`` makes a company FAQ file the base dataset; ``preference_pairs``
turns approved corrections into DPO pairs. Each step is its own module so it
can be read, tested and reused alone.
"""

from feedback.pii import PiiMasker
from trainer.dataset.build import BuildResult, DatasetInvalid, build_dataset, lineage_text, list_datasets, next_version
from trainer.dataset.sources import import_base, list_bases, resolve_base_file

__all__ = [
    "BuildResult",
    "DatasetInvalid",
    "PiiMasker",
    "build_dataset",
    "import_base",
    "lineage_text",
    "list_bases",
    "list_datasets",
    "next_version",
    "resolve_base_file",
]
