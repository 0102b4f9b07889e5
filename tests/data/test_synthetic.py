"""`longalign_hf.data.synthetic`: the generated retrievals hold the facts they say, and their answers are right."""

import re

import pytest

from longalign_hf.data.synthetic import documentation_paragraphs, long_tailed_chat_data

FACT = re.compile(r"The secret code of ([\w-]+) is (\d{7})\.")
QUESTION = re.compile(r"\n\nWhat is the secret code of ([\w-]+)\? Answer with one sentence\.")


def _long_rows(rows):
    return [row for row in rows if row["messages"][0]["role"] == "system"]


@pytest.mark.parametrize("num_facts", [1, 3])
def test_every_retrieval_answers_its_question_from_its_document(num_facts):
    rows = long_tailed_chat_data(4, 12, max_chars=3000, min_long_chars=1500, seed=5, num_facts=num_facts)
    assert len(rows) == 16 and len(_long_rows(rows)) == 12
    documentation = " ".join(documentation_paragraphs() * 2)  # a haystack wraps round to the first paragraph
    for row in _long_rows(rows):
        system, user, assistant = row["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        document, question = (
            user["content"][: QUESTION.search(user["content"]).start()],
            QUESTION.search(user["content"]),
        )
        assert question.end() == len(user["content"])
        facts = FACT.findall(document)
        names = [name for name, _ in facts]
        assert len(facts) == num_facts and len(set(names)) == num_facts  # distractors never share the asked name
        codes = dict(facts)
        asked = question.group(1)
        assert assistant["content"] == f"The secret code of {asked} is {codes[asked]}."
        assert len(user["content"]) <= 3000
        # Around the facts, the document is documentation text, and every fact starts a sentence.
        for match in FACT.finditer(document):
            assert match.start() == 0 or document[match.start() - 2 : match.start()] == ". "
        rest = [part.strip() for part in FACT.split(document)[::3] if part.strip()]
        assert all(part in documentation for part in rest)


def test_another_seed_asks_other_questions():
    sizes = {"max_chars": 13200, "min_long_chars": 4400, "num_facts": 3}
    train = {row["messages"][1]["content"] for row in _long_rows(long_tailed_chat_data(48, 24, seed=0, **sizes))}
    heldout = {row["messages"][1]["content"] for row in _long_rows(long_tailed_chat_data(0, 12, seed=1, **sizes))}
    assert len(heldout) == 12 and not train & heldout
