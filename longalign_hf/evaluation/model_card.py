"""Add an evaluation's results to the model card (`README.md`) of a model in a local folder.

`longalign eval longbench-chat` and `longalign eval needle` call `record_in_model_card` when `--model` is a local folder
(a model trained with `LongAlignSFTTrainer` has a card from `save_model`). Each evaluation owns one Markdown section,
fenced by `<!-- longalign:KEY -->` and `<!-- /longalign:KEY -->`: a rerun replaces it in place, never adds a second
one. A new section goes above the card's `EVALUATION_ANCHOR` (the training card has one under "## Evaluation"), or
into an "## Evaluation (longalign-hf)" section added at the end of a card without it.

Everything else in the card stays as it was: without `model-index` entries to add, the metadata block is kept byte
for byte; with them, the metadata is parsed and written back by `huggingface_hub` in its original key order (YAML
comments in it are then lost). Entries of the same benchmark, data set configuration, metric and judge are replaced,
others kept. Images the section links are copied next to the card; images the old section linked and the new one does
not are removed. A folder without a card gets a minimal one (metadata `library_name: transformers`, a title, a line
saying `longalign eval` created it, and the results). A card whose metadata cannot be parsed is left alone, with a
warning: the results stay in the evaluation's output folder.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from longalign_hf.training.model_card import CARD_NAME, EVALUATION_ANCHOR, write_card

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

logger = logging.getLogger(__name__)

# Two `model-index` entries with the same values of these fields report the same thing: the newer replaces the older.
_SAME_RESULT = ("task_type", "dataset_type", "dataset_config", "dataset_split", "metric_type", "metric_config")
_LINKED_IMAGE = re.compile(r"\]\(([^()/\s]+\.png)\)")


def _fences(key: str) -> tuple[str, str]:
    return f"<!-- longalign:{key} -->", f"<!-- /longalign:{key} -->"


def _minimal_card(folder: Path) -> str:
    return (
        f"---\nlibrary_name: transformers\n---\n\n# {folder.resolve().name}\n\nThis card was created by `longalign "
        f"eval` (longalign-hf) to hold evaluation results: the folder had none.\n\n## Evaluation\n\n"
        f"{EVALUATION_ANCHOR}\n"
    )


def update_model_card(
    folder: str | Path,
    key: str,
    section: str,
    eval_results: Sequence[EvalResult] = (),
    images: Sequence[tuple[Path, str]] = (),
) -> Path:
    """Put `section` (Markdown) into `folder/README.md` as the section of evaluation `key`, replacing an earlier one.

    `eval_results` are added to the card's `model-index` (replacing entries that report the same benchmark, data set
    configuration, metric and judge); `images` are `(source file, name)` pairs copied into `folder` under `name` for
    the section to link. Raises `ValueError` if the card's metadata cannot be parsed (nothing is changed then).
    Returns the card's path.
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    path = folder / CARD_NAME
    if path.is_file():
        with path.open(encoding="utf-8-sig", newline="") as handle:  # line endings as they are
            original = handle.read()
    else:
        original = _minimal_card(folder)
    try:
        card = ModelCard(original)
    except ValueError as error:
        raise ValueError(f"its metadata cannot be parsed ({' '.join(str(error).split())})") from None
    start, end = _fences(key)
    block = f"{start}\n\n{section.strip()}\n\n{end}"
    text = card.text
    old = re.search(re.escape(start) + r".*?" + re.escape(end), text, flags=re.DOTALL)
    if old is not None:
        stale = set(_LINKED_IMAGE.findall(old.group(0))) - {name for _, name in images}
        text = text[: old.start()] + block + text[old.end() :]
    else:
        stale = set()
        if EVALUATION_ANCHOR not in text:
            text = text.rstrip("\n") + f"\n\n## Evaluation (longalign-hf)\n\n{EVALUATION_ANCHOR}\n"
        text = text.replace(EVALUATION_ANCHOR, f"{block}\n\n{EVALUATION_ANCHOR}", 1)

    if eval_results:
        kept = [
            result
            for result in card.data.eval_results or []
            if not any(all(getattr(result, f) == getattr(new, f) for f in _SAME_RESULT) for new in eval_results)
        ]
        card.data.eval_results = [*kept, *eval_results]
        card.data.model_name = card.data.model_name or folder.resolve().name
        card.text = text
        content = str(card)
    else:
        content = original[: len(original) - len(card.text)] + text  # the metadata block as it was

    for source, name in images:
        shutil.copyfile(source, folder / name)
    for name in stale:
        (folder / name).unlink(missing_ok=True)
    return write_card(folder, content)


def record_in_model_card(
    model: str,
    key: str,
    section: str,
    eval_results: Sequence[EvalResult] = (),
    images: Sequence[tuple[Path, str]] = (),
    skip_reason: str | None = None,
) -> Path | None:
    """`update_model_card` for the `--model` of an evaluation command, when it is a local folder; `None` (and a log
    line saying why) when the card is left alone: `--model` is not a local folder, `skip_reason` is given (e.g. the
    results are incomplete), or the card cannot be read, parsed or written."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        logger.info("%s is not a local folder: no model card to add the %s results to.", model, key)
        return None
    if skip_reason is not None:
        logger.info("Model card %s left as it is: %s.", folder / CARD_NAME, skip_reason)
        return None
    try:
        path = update_model_card(folder, key, section, eval_results, images)
    except (OSError, ValueError) as error:
        logger.warning(
            "Could not add the %s results to the model card %s: %s. The results are in the output folder.",
            key,
            folder / CARD_NAME,
            error,
        )
        return None
    logger.info("Added the %s results to the model card %s", key, path)
    return path
