"""The needle prompts: the haystack, where a needle lands, the prompt's length, RULER probes and match scoring."""

import re

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from longalign_hf.errors import UserInputError
from longalign_hf.evaluation.needle.answering import HAYSTACK_MARGIN
from longalign_hf.evaluation.needle.haystack import Haystack, load_haystack
from longalign_hf.evaluation.needle.probes import (
    DEPTH_TOLERANCE,
    PAPER_KEY_FACTS,
    PAPER_NEEDLE,
    PAPER_QUESTION,
    PAPER_TEMPLATE,
    build_needle_prompt,
    depth_grid,
    match_fraction,
)
from longalign_hf.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_byte_tokenizer

# The test's own statement of a sentence boundary: after . ! ? (and closing quotes/brackets) and whitespace, or a
# blank line. The position of a boundary is where the next sentence starts.
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n\s*\n")


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE tokenizer trained on the haystack (about 3.6 characters per token, like real ones): the
    reference script's period-token shortcut would put every needle at the start with it."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    text = load_haystack()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([text[i : i + 10_000] for i in range(0, 60_000, 10_000)], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module", params=["bytes", "bpe"])
def tokenizer_and_haystack(request, bpe_tokenizer):
    tokenizer = build_byte_tokenizer() if request.param == "bytes" else bpe_tokenizer
    return tokenizer, Haystack(load_haystack(), tokenizer, min_tokens=8000)


def count_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_tokens(tokenizer, prompt):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return count_tokens(tokenizer, text)


def split_at_needle(prompt):
    """The haystack text before and after the paper's needle (and the space that follows it) in a single prompt."""
    head, tail = PAPER_TEMPLATE.split("{context}")
    tail = tail.format(question=PAPER_QUESTION)
    assert prompt.startswith(head) and prompt.endswith(tail)
    context = prompt[len(head) : -len(tail)]
    assert context.count(PAPER_NEEDLE) == 1
    before, after = context.split(PAPER_NEEDLE)
    assert after == "" or after.startswith(" ")
    return before, after[1:]


@pytest.mark.parametrize("depth", [0, 10, 33, 50, 77, 90, 100])
def test_the_needle_sits_at_the_sentence_boundary_nearest_the_depth(tokenizer_and_haystack, depth):
    tokenizer, haystack = tokenizer_and_haystack
    probe = build_needle_prompt(tokenizer, haystack, length=3000, depth=depth)
    before, after = split_at_needle(probe.prompt)
    haystack_text = before + after  # the haystack as it was, without the needle and its space

    position = count_tokens(tokenizer, before)
    total = count_tokens(tokenizer, haystack_text)
    target = depth / 100 * total
    # Right after a sentence end (or at the very start)...
    assert before == "" or re.search(rf"(?:{SENTENCE_END.pattern})\Z", before)
    if depth == 0:
        assert before == ""
    if depth == 100:
        assert after == ""
    # ...and no sentence boundary is nearer the target (2 tokens of slack for the tokens that merge differently at
    # the needle's edges).
    for match in SENTENCE_END.finditer(haystack_text):
        boundary = count_tokens(tokenizer, haystack_text[: match.end()])
        assert abs(position - target) <= abs(boundary - target) + 2, (position, boundary, target)
    # The recorded depth is the one reached, and it is within the stated tolerance of the asked one.
    assert probe.needle_depths[0] == pytest.approx(100 * position / total, abs=1.0)
    assert abs(probe.needle_depths[0] - depth) <= DEPTH_TOLERANCE
    assert abs(100 * position / total - depth) <= DEPTH_TOLERANCE + 0.5


@pytest.mark.parametrize(
    ("kind", "length"),
    [("bpe", 512), ("bpe", 1024), ("bpe", 2048), ("bpe", 4096), ("bpe", 8192), ("bytes", 768), ("bytes", 2048)],
)
def test_the_needle_lands_within_the_stated_tolerance_at_every_length_and_depth(bpe_tokenizer, kind, length, caplog):
    # The module docstring's promise for the built-in haystack: within DEPTH_TOLERANCE at every depth, from 512 tokens
    # for a tokenizer of about 3.6 characters per token (as real ones), from 768 with one token per byte. Measured on
    # the finished prompt, not taken from the record.
    tokenizer = bpe_tokenizer if kind == "bpe" else build_byte_tokenizer()
    haystack = Haystack(load_haystack(), tokenizer, min_tokens=length + HAYSTACK_MARGIN)
    for depth in (0, 5, 10, 25, 33, 50, 67, 75, 90, 95, 100):
        probe = build_needle_prompt(tokenizer, haystack, length=length, depth=depth)
        before, after = split_at_needle(probe.prompt)
        measured = 100 * count_tokens(tokenizer, before) / count_tokens(tokenizer, before + after)
        assert abs(measured - depth) <= DEPTH_TOLERANCE + 0.5, (length, depth, measured)
        assert abs(probe.needle_depths[0] - depth) <= DEPTH_TOLERANCE, (length, depth, probe.needle_depths)
        assert abs(probe.prompt_tokens - length) <= 3
    assert "sits at depth" not in caplog.text  # no needle was reported off its depth


def test_a_needle_that_cannot_come_near_its_depth_is_reported_and_drawn_where_it_is(tokenizer, tmp_path, caplog):
    # One token per byte and sentences of up to 300 characters: a 512-token prompt holds a few long sentences, so
    # 50% may be out of reach. The depth reached is recorded, warned about and shown in the heatmap.
    haystack = Haystack(load_haystack(), tokenizer, min_tokens=3000)
    probe = build_needle_prompt(tokenizer, haystack, length=512, depth=50)
    before, after = split_at_needle(probe.prompt)
    reached = 100 * len(before.encode()) / len((before + after).encode())
    assert probe.needle_depths[0] == pytest.approx(reached, abs=0.5)
    assert abs(reached - 50) > DEPTH_TOLERANCE
    assert f"sits at depth {probe.needle_depths[0]:.1f}%, not 50%" in caplog.text


@pytest.mark.parametrize("probe", ["single", "multikey", "multivalue"])
@pytest.mark.parametrize("length", [1000, 2500, 6000])
def test_the_prompt_has_the_requested_length(tokenizer_and_haystack, length, probe):
    tokenizer, haystack = tokenizer_and_haystack
    built = build_needle_prompt(tokenizer, haystack, length=length, depth=40, probe=probe)
    measured = chat_tokens(tokenizer, built.prompt)
    assert measured == built.prompt_tokens
    assert abs(measured - length) <= 3


def test_a_length_too_short_for_the_template_is_refused(tokenizer):
    haystack = Haystack(load_haystack(), tokenizer, min_tokens=2000)
    with pytest.raises(ValueError, match="before any haystack"):
        build_needle_prompt(tokenizer, haystack, length=200, depth=50)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Eat a sandwich and sit in Dolores Park on a sunny day.", 1.0),
        ("EAT A SANDWICH in dolores\n  park", 2 / 3),
        ("Go to the Golden Gate Bridge.", 0.0),
        ("", 0.0),
    ],
)
def test_key_facts_are_matched_case_insensitively(answer, expected):
    assert match_fraction(answer, PAPER_KEY_FACTS) == pytest.approx(expected)


def test_an_empty_list_of_facts_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        match_fraction("anything", [])


_VALUE_PATTERNS = {
    "numbers": r"\d{7}",
    "uuids": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    "words": r"[a-z]+-[a-z]+",
}


@pytest.mark.parametrize("value_type", ["numbers", "uuids", "words"])
@pytest.mark.parametrize("probe", ["multikey", "multivalue"])
def test_ruler_probes_plant_their_answers_exactly(tokenizer, probe, value_type):
    haystack = Haystack(load_haystack(), tokenizer, min_tokens=5000)
    built = build_needle_prompt(tokenizer, haystack, 3000, 50, probe, seed=7, value_type=value_type)
    needle_sentence = re.compile(
        rf"One of the special magic {value_type} for ([a-z]+-[a-z]+) is: ({_VALUE_PATTERNS[value_type]})\."
    )
    planted = needle_sentence.findall(built.prompt)
    assert len(planted) == len(built.needles) == 4
    assert all(built.prompt.count(sentence) == 1 for sentence in built.needles)
    keys = [key for key, _ in planted]
    values = {value for _, value in planted}
    assert len(values) == 4
    assert built.prompt.endswith(
        f"What are all the special magic {value_type} for {built.query} mentioned in the provided text?"
    )
    if probe == "multikey":
        assert len(set(keys)) == 4 and built.query in keys
        assert built.expected == [value for key, value in planted if key == built.query]
    else:
        assert set(keys) == {built.query}
        assert sorted(built.expected) == sorted(values)
    for value in built.expected:  # planted once, as written
        assert built.prompt.count(value) == 1
    # Seeded: the same seed builds the same prompt, another seed other values.
    assert build_needle_prompt(tokenizer, haystack, 3000, 50, probe, seed=7, value_type=value_type) == built
    assert build_needle_prompt(tokenizer, haystack, 3000, 50, probe, seed=8, value_type=value_type).expected != (
        built.expected
    )


def test_ruler_answers_are_scored_by_exact_values(tokenizer):
    haystack = Haystack(load_haystack(), tokenizer, min_tokens=5000)
    multivalue = build_needle_prompt(tokenizer, haystack, 3000, 50, "multivalue")
    values = multivalue.expected
    assert match_fraction(f"The numbers are {values[0]}, {values[1]}, {values[2]} and {values[3]}.", values) == 1.0
    assert match_fraction(f"{values[2]} and {values[0]}", values) == 0.5
    assert match_fraction(values[0][:-1], values) == 0.0  # a value cut short is not a match
    multikey = build_needle_prompt(tokenizer, haystack, 3000, 50, "multikey")
    distractor = re.search(r"is: (\d{7})\.", multikey.needles[1]).group(1)
    assert match_fraction(f"It is {distractor}.", multikey.expected) == 0.0
    assert match_fraction(f"It is {multikey.expected[0]}.", multikey.expected) == 1.0


def test_depth_grid_is_the_papers_ten_depths():
    assert depth_grid(10) == [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]
    assert depth_grid(3) == [0, 50, 100]


def test_a_haystack_folder_replaces_the_default(tmp_path):
    (tmp_path / "b.txt").write_text("Second file. It ends here.", encoding="utf-8")
    (tmp_path / "a.txt").write_text("First file, first sentence. Then another!", encoding="utf-8")
    assert load_haystack(tmp_path) == "First file, first sentence. Then another!\n\nSecond file. It ends here."
    with pytest.raises(ValueError, match="is not a folder"):
        load_haystack(tmp_path / "a.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt file with text"):
        load_haystack(tmp_path / "empty")


def test_a_count_of_depths_that_would_repeat_depths_is_refused():
    assert len(set(depth_grid(101))) == 101
    with pytest.raises(UserInputError, match="would repeat depths"):
        depth_grid(150)
    with pytest.raises(UserInputError, match="at least 1"):
        depth_grid(0)
