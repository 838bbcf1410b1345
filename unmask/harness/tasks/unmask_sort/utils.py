"""The documents of `unmask_sort`, built here rather than downloaded: the task runs offline.

They are the held-out split `unmask eval` reports on, `SortTask(**SORT_OPTIONS).test_examples`: every
bundled sort model was trained with these task options, so all of them share these 1000 questions.
"""
from __future__ import annotations

from typing import Any


def load_test(**metadata: Any) -> dict[str, Any]:
    """{"test": Dataset of {prompt, answer}} in the held-out order (`--limit N` takes the first N).

    lm-eval calls a task's `custom_dataset` with the task's metadata, which it fills with the model's
    `--model_args` and `--metadata` as well; none of those choose the documents, so they are not read here.
    """
    import datasets

    from unmask.data.sort import SortTask
    from unmask.train.recipes import SORT_OPTIONS

    examples = SortTask(**SORT_OPTIONS).test_examples
    rows = {"prompt": [ex.prompt for ex in examples], "answer": [ex.answer for ex in examples]}
    return {"test": datasets.Dataset.from_dict(rows)}
