"""The tokenizer data lengths are counted in: the default one, and a loader whose errors say what to pass.

`longalign data generate` filters documents by their length in its tokens, `longalign data build sft` reports the
mix's lengths in them; both take `--tokenizer` (default `DEFAULT_TOKENIZER`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from longalign_hf import command_args
from longalign_hf.errors import UserInputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Lengths are measured in this tokenizer's tokens unless `--tokenizer` names the one of the model you train: ungated,
# with a chat template, and good at Chinese, which the LongAlign data mixes in.
DEFAULT_TOKENIZER = "Qwen/Qwen2.5-7B-Instruct"


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer lengths are counted in; if it cannot be loaded, a `UserInputError` says what to pass."""
    from transformers import AutoTokenizer

    folder = os.path.expanduser(name_or_path)
    if name_or_path.startswith((".", "/", "~")) and not os.path.exists(folder):
        reason = "no such folder"
    elif os.path.isfile(folder):
        reason = "a file, not a folder"
    elif os.path.isdir(folder) and not any(
        os.path.isfile(os.path.join(folder, name)) for name in command_args.TOKENIZER_FILES
    ):
        reason = f"the folder holds no tokenizer file: none of {', '.join(command_args.TOKENIZER_FILES)}"
    else:
        try:
            return AutoTokenizer.from_pretrained(os.path.expanduser(name_or_path))
        except Exception as error:  # offline, unknown id, gated, or a folder without tokenizer files
            lines = str(error).strip().splitlines()
            reason = lines[0] if lines else type(error).__name__
    raise UserInputError(
        f"could not load the tokenizer {name_or_path!r} ({reason}); pass `--tokenizer PATH_OR_ID` with the tokenizer "
        "of the model you will train: a Hub id, or a local folder with its tokenizer files (e.g. written by "
        "`save_pretrained`), which works offline"
    )
