"""A small LongBench-Chat source in the published format (not the published data), for the builder and eval tests."""

import json

TEMPLATE = (
    "Judge the answer.\n[Question]\n{}\n[Reference]\n{}\n"
    "[Example]\n{}\nRating: [[{}]]\n[Example]\n{}\nRating: [[{}]]\n[Example]\n{}\nRating: [[{}]]\n"
    'Reply "[[rating]]".\n[Answer]\n{}\nRating: '
)
CASES = [
    {
        "idx": 1,
        "query": "Who signed the 1998 maintenance contract?",
        "answer": "Dana Okafor signed it.",
        "prompt": "CONTRACT LOG\n" + "Line of the log. " * 20 + "\n\nWho signed the 1998 maintenance contract?",
        "source": "kept out of the records",
    },
    {
        "idx": 2,
        "query": "请总结这份 LongAlign 报告的主要结论。",
        "answer": "报告认为打包训练加损失加权效果最好。",
        "prompt": "报告正文。" * 30 + "\n\n请总结这份 LongAlign 报告的主要结论。",
    },
    {
        "idx": 3,
        "query": "List the three bridges in the text.",
        "answer": "North, Mill and Harbour bridges.",
        "prompt": "Town history. " * 25 + "\n\nList the three bridges in the text.",
    },
]
FEW_SHOTS = [
    [{"answer": f"example {case} answer {shot}", "score": 2 + 3 * shot} for shot in range(3)] for case in range(3)
]


def write_source(folder, cases=CASES, few_shots=FEW_SHOTS, template=TEMPLATE):
    """A LongBench-Chat source folder: test_cases.json, few_shots.json, prompt_fs.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_cases.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    (folder / "few_shots.json").write_text(json.dumps(few_shots, ensure_ascii=False), encoding="utf-8")
    (folder / "prompt_fs.txt").write_text(template, encoding="utf-8")
    return folder


ENGLISH_ONLY = [CASES[0], {**CASES[2], "idx": 2}]
CHINESE_ONLY = [{**CASES[1], "idx": 1}]
