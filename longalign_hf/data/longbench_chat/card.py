"""The dataset card (README.md) of the LongBench-Chat folder that `longalign data build longbench-chat` writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from longalign_hf.data.longbench_chat.format import CITATION
from longalign_hf.data.longbench_chat.source import (
    CONFIG_NAMES,
    DESCRIPTION,
    HOMEPAGE,
    LANGUAGE_NAMES,
    SOURCE_FILES,
    TEST_CASES,
    TEST_CASES_GIT_BLOB,
)

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard, DatasetCardData


def dataset_card(card_data: DatasetCardData, counts: dict[str, int], repo_id: str | None) -> DatasetCard:
    """The card: `card_data` as its YAML header, then what the data set is, its configs (`counts`: config -> cases),
    fields, scoring, source and citation; its loading example names `repo_id`, or a placeholder path."""
    from huggingface_hub import DatasetCard

    location = repo_id or "path/to/this/folder"
    rows = "\n".join(f"| `{name}` | {counts[name]} |" for name in counts)
    missing = [name for name in CONFIG_NAMES if name not in counts]
    if missing:
        rows += "\n\n" + " ".join(
            f"The source has no {LANGUAGE_NAMES[name]} case, so there is no `{name}` config." for name in missing
        )
    example_config = next(name for name in (*LANGUAGE_NAMES, "all") if name in counts)
    body = f"""
# LongBench-Chat

{DESCRIPTION}

Each case has a long `prompt` (a document followed by the question), the short `query`, a reference `answer`, and
`few_shots`: scored example answers that the judge sees with their ratings. A judge LLM rates a model's answer 1-10
from the query, the reference and the examples (never the document), with the prompt template in `judge_template`
(the benchmark's `prompt_fs.txt`, repeated in every row).

| config | cases |
|--------|-------|
{rows}

```python
from datasets import load_dataset

dataset = load_dataset("{location}", "{example_config}", split="test")
```

## Fields

- `idx` (int32): the case number in the source (1-based).
- `query` (string): the question, the last paragraph of `prompt`.
- `prompt` (string): document + question, as the model sees it.
- `answer` (string): the reference answer.
- `few_shots` (list of `{{answer: string, score: int32}}`): scored example answers for the judge.
- `language` (string): `en` or `zh`, derived from the share of CJK characters in the query (the source has no
  language field).
- `length` (int32): characters in `prompt`; token counts depend on the model's tokenizer.
- `judge_template` (string): the judge prompt template, with positional `{{}}` slots for the question, the reference,
  (answer, score) per example, and the answer to rate.

## Scoring

`longalign eval longbench-chat --model MODEL --dataset {location}` (from longalign-hf) generates answers through the
model's chat template, truncating prompts over the window in the middle, and judges them twice with shuffled
examples, as the paper does; the `evaluate` metric `longalign_hf.metrics.LONGBENCH_CHAT` scores predictions you
already have.

## Source and license

Built with `longalign data build longbench-chat` from the files published in
[THUDM/LongAlign `LongBench_Chat/`]({HOMEPAGE}) ({", ".join(SOURCE_FILES)}; the published `{TEST_CASES}` is git
blob `{TEST_CASES_GIT_BLOB}`), released under the Apache License 2.0. The data are THUDM's; only the layout is ours.

## Citation

```bibtex
{CITATION.strip()}
```
"""
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
