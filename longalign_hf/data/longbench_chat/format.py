"""The LongBench-Chat data format: the paper's citation, the few-shot slots of its judge prompt template, and the
language of a case (the benchmark has English and Chinese cases but no language field).

Stdlib only: the builder command and the Self-Instruct generator import it before they know what will run.
"""

from __future__ import annotations

import re
import string

from longalign_hf.errors import UserInputError

CITATION = """\
@inproceedings{bai2024longalign,
  title = {{LongAlign}: A Recipe for Long Context Alignment of Large Language Models},
  author = {Bai, Yushi and Lv, Xin and Zhang, Jiajie and He, Yuze and Qi, Ji and Hou, Lei and Tang, Jie and
            Dong, Yuxiao and Li, Juanzi},
  booktitle = {Findings of the Association for Computational Linguistics: EMNLP 2024},
  pages = {1376--1395},
  year = {2024},
  doi = {10.18653/v1/2024.findings-emnlp.74},
}
"""

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def few_shot_slots(template: str) -> int:
    """How many scored examples a judge prompt template takes; raises `UserInputError` if it is not a LongBench-Chat one.

    A template has only positional `{}` slots: question, reference, then (answer, score) per example, then the
    answer to rate, so `2 * k + 3` slots for `k` examples (the published `prompt_fs.txt` has 9: `k = 3`). Literal
    braces are written `{{` and `}}`.
    """
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as exc:
        raise UserInputError(f"The judge prompt template is not a format string ({exc}).") from exc
    fields = [field for field in fields if field[0] is not None]
    if any(field != ("", "", None) for field in fields):
        raise UserInputError(
            "The judge prompt template must only have empty `{}` slots (question, reference, answer/score per "
            f"example, answer to rate), but has {['{' + name + '}' for name, _, _ in fields if name]}."
        )
    if len(fields) < 3 or (len(fields) - 3) % 2:
        raise UserInputError(
            f"The judge prompt template has {len(fields)} `{{}}` slots; a LongBench-Chat template has 2 * k + 3 "
            "(question, reference, an answer and a score per example, the answer to rate)."
        )
    return (len(fields) - 3) // 2


def detect_language(text: str) -> str:
    """`"zh"` if CJK characters make up at least a quarter of the CJK and Latin letters in `text`, else `"en"`.

    LongBench-Chat has English and Chinese cases but no language field; a Chinese character carries about as much as
    a few Latin letters, hence the low threshold (a Chinese question naming `LongAlign` stays Chinese).
    """
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    return "zh" if cjk and 4 * cjk >= cjk + latin else "en"
