"""Self-Instruct's prompts: the paper's four task types, the prompt that asks for 5 questions, and the reply parser.

Stdlib only: `longalign data generate` imports this before it knows what will run.
"""

from __future__ import annotations

import re

NUM_QUESTIONS = 5
TASK_TYPES = ("general", "summary", "reasoning", "information_extraction")

# The paper's prompts, placed after the document (its appendix; "diversed" is verbatim), and our translations.
QUESTION_PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "general": "Given the above text, please propose 5 English questions that are diverse and cover all parts of "
        'the text, in the following format: "1: ", "2: ", ...',
        "summary": "Given the above text, please propose 5 English questions that require summarization or "
        "integration from multiple parts, make sure they are diverse and cover all parts of the text, in the "
        'following format: "1: ", "2: ", ...',
        "reasoning": "Given the above text, please propose 5 English questions that require multi-hop reasoning, "
        'make sure they are diverse and cover all parts of the text, in the following format: "1: ", "2: ", ...',
        "information_extraction": "Given the above text, please propose 5 English information-seeking questions, "
        'make sure they are diversed and cover all parts of the text, in the following format: "1: ", "2: ", ...',
    },
    "zh": {
        "general": '请根据以上文本，提出5个多样化且覆盖文本各个部分的中文问题，格式如下："1：", "2：", ...',
        "summary": "请根据以上文本，提出5个需要对文本多个部分进行总结或整合的中文问题，确保问题多样化且覆盖文本的各个部分，"
        '格式如下："1：", "2：", ...',
        "reasoning": '请根据以上文本，提出5个需要多跳推理的中文问题，确保问题多样化且覆盖文本的各个部分，格式如下："1：", "2：", ...',
        "information_extraction": "请根据以上文本，提出5个信息查找类的中文问题，确保问题多样化且覆盖文本的各个部分，"
        '格式如下："1：", "2：", ...',
    },
}

# A numbered item: "1: ", "1. ", "1) ", "(1)", "1、", "1：", "Q1:", "Question 1.", "问题1：", "- 1.", "**1.**", "**Q1:**".
# A "." followed by a digit is a decimal ("1.5 million"), not a separator.
_ITEM = re.compile(
    r"^\s*(?:[-*•]\s+)?(?:\*\*|__)?\s*(?:(?:Q|Question|问题)\s*)?[(（]?(?P<number>\d{1,2})"
    r"\s*(?:[:：、)）]|[.．](?!\d))\s*(?:\*\*|__)?\s*(?P<text>.*)$",
    re.IGNORECASE,
)


def question_prompt(task_type: str, language: str) -> str:
    """The prompt that asks for 5 questions of `task_type` (one of `TASK_TYPES`), in `language` (`"en"` or `"zh"`)."""
    return QUESTION_PROMPTS[language][task_type]


def _strip_emphasis(text: str) -> str:
    return text.strip().removeprefix("**").removesuffix("**").strip()


def parse_questions(reply: str, num_questions: int = NUM_QUESTIONS) -> list[str] | None:
    """The first `num_questions` questions of a numbered list in `reply`, or `None` if it has fewer.

    Items are numbered 1, 2, 3, ... in order, one per line, in any of the usual styles ("1: ", "1. ", "1) ", "Q1:",
    "**1.**", "1：" ...). A line that does not start the next number continues the current question (wrapped lines,
    or a question on the line after its number) until a blank line; text before item 1 or after the list is ignored.
    More than `num_questions` items: the first ones are kept.

    Example:
        >>> parse_questions("Here you go:\\n1: Who?\\n2. What?\\n3) Where\\nexactly?\\nQ4: When?\\n**5.** Why?")
        ['Who?', 'What?', 'Where exactly?', 'When?', 'Why?']
        >>> print(parse_questions("1: Who?\\n2: What?"))
        None
    """
    items: list[list[str]] = []
    open_item = False
    for line in reply.splitlines():
        match = _ITEM.match(line)
        if match and int(match["number"]) == len(items) + 1:
            items.append([match["text"]] if match["text"].strip() else [])
            open_item = True
        elif not line.strip():
            open_item = open_item and not items[-1]  # a blank line ends a question, unless it has no text yet
        elif open_item:
            items[-1].append(line.strip())
    questions = [_strip_emphasis(" ".join(parts)) for parts in items[:num_questions]]
    if len(questions) < num_questions or not all(questions):
        return None
    return questions
