"""The haystack of the needle probes: its text (`load_haystack`) and, tokenized once, its sentence boundaries, the runs
of whole sentences that fill a length, and the needles placed in such a run (`Haystack`).

The rules (what a sentence boundary is, how a run and a needle's place are chosen) are in
`longalign_hf.evaluation.needle.probes`.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from longalign_hf.data.synthetic import documentation_paragraphs
from longalign_hf.errors import UserInputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# A sentence ends at . ! or ? (then any closing quotes or brackets) followed by whitespace; a blank line ends one too.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
# Candidate first sentences of a haystack window (see `Haystack.window`).
_MAX_WINDOW_STARTS = 2048
# Tokens a window may fall short of the best-filling one to bring a sentence boundary nearer the asked depth.
_LENGTH_SLACK = 2


def load_haystack(haystack_dir: str | os.PathLike | None = None) -> str:
    """The haystack text: every `*.txt` file under `haystack_dir` (sorted by path, joined by blank lines), or by
    default the prose of the Python documentation that ships with CPython (`pydoc_data.topics`).

    The default keeps the paragraphs that end a sentence and have no sentence over 300 characters, leaving code
    listings and tables out (about 290,000 characters), so a needle can sit close to any depth even in a short
    haystack.
    """
    if haystack_dir is None:
        return "\n\n".join(
            paragraph
            for paragraph in documentation_paragraphs()
            if paragraph.endswith((".", "!", "?")) and max(map(len, _BOUNDARY.split(paragraph))) <= 300
        )
    folder = Path(haystack_dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserInputError(
            f"--haystack-dir {folder} {what}: pass a folder of .txt files, or leave --haystack-dir out for the "
            "built-in Python documentation"
        )
    files = sorted(folder.rglob("*.txt"))
    texts = [file.read_text(encoding="utf-8", errors="replace").strip() for file in files]
    text = "\n\n".join(text for text in texts if text)
    if not text:
        raise UserInputError(
            f"--haystack-dir {folder} holds no .txt file with text: put the haystack's text in .txt files there"
        )
    if not _BOUNDARY.search(text):
        raise UserInputError(
            f"The text under --haystack-dir {folder} has no sentence boundary (`.`, `!` or `?` then whitespace, or a "
            "blank line), so there is nowhere to put a needle: use prose"
        )
    return text


class Haystack:
    """Haystack text tokenized once, with its sentence boundaries in characters and in tokens.

    Args:
        text (`str`): the haystack (see `load_haystack`); it is repeated, joined by blank lines, until it holds
            `min_tokens` tokens.
        tokenizer (`PreTrainedTokenizerBase`): the model's tokenizer. It must be a fast one: its offsets map the
            sentence boundaries found in the text to token positions.
        min_tokens (`int`): how many tokens the haystack must hold (the longest prompt and some margin).
    """

    def __init__(self, text: str, tokenizer: PreTrainedTokenizerBase, min_tokens: int):
        if not tokenizer.is_fast:
            raise UserInputError(
                f"The tokenizer of {tokenizer.name_or_path!r} is a slow one: needle prompts need the token offsets "
                "of a fast tokenizer (`AutoTokenizer.from_pretrained(..., use_fast=True)`)."
            )
        unit = text.strip()
        if not unit:
            raise UserInputError("The haystack text is empty: give a haystack with text.")
        num_chars = 6 * min_tokens + 1000  # a first guess; doubled below while it falls short
        while True:
            source = "\n\n".join([unit] * (num_chars // len(unit) + 1))
            starts = [0, *(match.end() for match in _BOUNDARY.finditer(source))]
            cut = starts[bisect_right(starts, num_chars) - 1] or len(source)
            self.text = source[:cut]
            encoding = tokenizer(self.text, add_special_tokens=False, return_offsets_mapping=True)
            self.num_tokens = len(encoding["input_ids"])
            if self.num_tokens >= min_tokens:
                break
            num_chars *= 2
        token_starts = [start for start, _ in encoding["offset_mapping"]]
        # Boundary b starts a sentence at character `chars[b]`, after `tokens[b]` tokens of the haystack.
        self.chars = sorted({*(start for start in starts if start <= len(self.text)), len(self.text)})
        self.tokens = [bisect_right(token_starts, char - 1) for char in self.chars]

    def window(self, budget: int, depth: float | None = None) -> tuple[int, int]:
        """Boundaries `(i, j)` of a run of whole sentences of about `budget` tokens, with a boundary near `depth`.

        Runs starting at each of the first sentences are tried. The candidates are the runs closest to `budget` from
        below and those up to `_LENGTH_SLACK` tokens shorter; of these, the one with a sentence boundary nearest
        `depth` % of its tokens wins (to 0.1 point; without `depth`, the closest to `budget`), then the one closest to
        `budget`, then the one with the most sentences (the finest choice of depths), then the earliest.
        """
        candidates = []
        for i in range(min(len(self.tokens), _MAX_WINDOW_STARTS)):
            if self.tokens[i] + budget > self.num_tokens and i:
                break
            j = bisect_right(self.tokens, self.tokens[i] + budget) - 1
            candidates.append((budget - (self.tokens[j] - self.tokens[i]), i, j))
        closest = min(gap for gap, _, _ in candidates)

        def rank(candidate: tuple[int, int, int]) -> tuple[float, int, int, int]:
            gap, i, j = candidate
            miss = 0.0 if depth is None else abs(self.depth_of(self.place(i, j, depth), i, j) - depth)
            return round(miss, 1), gap, i - j, i

        _, i, j = min((c for c in candidates if c[0] <= closest + _LENGTH_SLACK), key=rank)
        return i, j

    def place(self, i: int, j: int, depth: float) -> int:
        """The boundary between `i` and `j` nearest to `depth` % of the tokens between them (the earlier on a tie)."""
        target = self.tokens[i] + depth / 100 * (self.tokens[j] - self.tokens[i])
        k = bisect_left(self.tokens, target, i, j + 1)
        return k - 1 if k > i and target - self.tokens[k - 1] <= self.tokens[k] - target else k

    def depth_of(self, k: int, i: int, j: int) -> float:
        """Where boundary `k` sits in the run from `i` to `j`, in % of its tokens."""
        total = self.tokens[j] - self.tokens[i]
        return 100 * (self.tokens[k] - self.tokens[i]) / total if total else 0.0

    def compose(self, i: int, j: int, needles: Sequence[str], depths: Sequence[float]) -> tuple[str, list[float]]:
        """The sentences between boundaries `i` and `j` with each needle at the boundary nearest its depth (% of the
        window's tokens). Returns the text and the depth each needle reached."""
        places = [self.place(i, j, depth) for depth in depths]
        pieces, cursor = [], self.chars[i]
        for n in sorted(range(len(needles)), key=lambda n: (places[n], n)):
            pieces.append(self.text[cursor : self.chars[places[n]]])
            cursor = self.chars[places[n]]
            if pieces[-1] and not pieces[-1][-1].isspace():  # only at the text's very end
                pieces.append(" ")
            pieces.append(needles[n] + " ")
        pieces.append(self.text[cursor : self.chars[j]])
        return "".join(pieces).rstrip(), [self.depth_of(place, i, j) for place in places]
