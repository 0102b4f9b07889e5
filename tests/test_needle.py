"""`longalign eval needle`: prompt construction, scoring, resume, the judge score and the command end to end."""

import json
import re
import shutil

import matplotlib.image
import pytest
from loopback_server import LoopbackServer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import longalign_hf.evaluation.needle as needle
from longalign_hf import cli
from longalign_hf.evaluation.needle import (
    PAPER_KEY_FACTS,
    PAPER_NEEDLE,
    PAPER_TEMPLATE,
    Haystack,
    build_needle_prompt,
    depth_grid,
    judge_needle_answers,
    load_haystack,
    match_fraction,
    run_needle,
)
from longalign_hf.judge import JudgeClient
from longalign_hf.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_byte_tokenizer, build_tiny_model

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


@pytest.mark.parametrize("depth", [0, 10, 33, 50, 77, 90, 100])
def test_the_needle_sits_at_the_last_sentence_boundary_before_the_depth(tokenizer_and_haystack, depth):
    tokenizer, haystack = tokenizer_and_haystack
    probe = build_needle_prompt(tokenizer, haystack, length=3000, depth=depth)
    head, tail = PAPER_TEMPLATE.split("{context}")
    tail = tail.format(question=probe.query)
    assert probe.prompt.startswith(head) and probe.prompt.endswith(tail)
    context = probe.prompt[len(head) : -len(tail)]
    assert context.count(PAPER_NEEDLE) == 1
    before, after = context.split(PAPER_NEEDLE)
    assert after == "" or after.startswith(" ")
    haystack_text = before + after[1:]  # the haystack as it was, without the needle and its space

    position = count_tokens(tokenizer, before)
    total = count_tokens(tokenizer, haystack_text)
    target = depth / 100 * total
    # Right after a sentence end (or at the very start)...
    assert before == "" or re.search(rf"(?:{SENTENCE_END.pattern})\Z", before)
    if depth == 0:
        assert before == ""
    if depth == 100:
        assert after == ""
    # ...at or before the target depth, with no sentence boundary between it and the target (2 tokens of slack for
    # the tokens that merge differently at the needle's edges).
    assert position <= target + 2
    for match in SENTENCE_END.finditer(haystack_text):
        boundary = count_tokens(tokenizer, haystack_text[: match.end()])
        assert not position + 2 < boundary <= target - 2, (position, boundary, target)
    # The recorded depth is the one reached.
    assert probe.needle_depths[0] == pytest.approx(100 * position / total, abs=1.0)
    if 10 <= depth < 100:  # a 3000-token haystack has sentences of a few dozen tokens: the needle is near its depth
        assert 0 < depth - probe.needle_depths[0] < 10


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


class CountingGenerator:
    """Wraps `generate_chat_answers` and counts the prompts it is asked to answer."""

    def __init__(self, monkeypatch):
        self.prompts = 0
        original = needle.generate_chat_answers

        def counting(model, tokenizer, prompts, **kwargs):
            self.prompts += len(prompts)
            return original(model, tokenizer, prompts, **kwargs)

        monkeypatch.setattr(needle, "generate_chat_answers", counting)


@pytest.fixture(scope="module")
def tiny_chat_model(tokenizer):
    return build_tiny_model(tokenizer, seed=0, max_position_embeddings=4096).eval()


def _run(model, tokenizer, output_dir, **options):
    settings = {"lengths": [700], "depths": [0, 100], "max_new_tokens": 2, "batch_size": 2}
    return run_needle(model, tokenizer, output_dir=output_dir, **{**settings, **options})


@pytest.fixture(scope="module")
def finished_run(tiny_chat_model, tokenizer, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("needle-run")
    return output_dir, _run(tiny_chat_model, tokenizer, output_dir)


def test_a_rerun_generates_nothing_new(finished_run, tiny_chat_model, tokenizer, tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    generator = CountingGenerator(monkeypatch)
    again = _run(tiny_chat_model, tokenizer, output_dir)
    assert generator.prompts == 0
    assert again["records"] == finished_run[1]["records"]

    # A crash cut the last record short: only it is redone; a new depth adds only its own record.
    lines = (output_dir / "needle.jsonl").read_text(encoding="utf-8").splitlines()
    (output_dir / "needle.jsonl").write_text("\n".join(lines[:-1] + [lines[-1][:30]]), encoding="utf-8")
    _run(tiny_chat_model, tokenizer, output_dir)
    assert generator.prompts == 1
    results = _run(tiny_chat_model, tokenizer, output_dir, depths=[0, 50, 100])
    assert generator.prompts == 2
    assert [record["depth"] for record in results["records"]] == [0, 50, 100]


def test_a_rerun_with_other_settings_is_refused(finished_run, tiny_chat_model, tokenizer, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    with pytest.raises(ValueError, match=r"other settings \(seed: 42 -> 1\)"):
        _run(tiny_chat_model, tokenizer, output_dir, seed=1)


def test_lengths_over_the_model_window_are_skipped(tiny_chat_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="Every length is over the model's 4096-token window"):
        _run(tiny_chat_model, tokenizer, tmp_path, lengths=[4095, 8000])


def test_the_judge_rates_answers_against_the_needle():
    def responder(request):
        return "Right. Rating: [[10]]" if "Dolores Park" in request.user_content.split("Answer]")[1] else "[[1]]"

    answers = ["Eat a sandwich in Dolores Park.", "No idea."]
    with LoopbackServer(responder) as server:
        ratings, usage = judge_needle_answers(JudgeClient("loopback-judge", base_url=server.base_url), answers)
    assert ratings == [10.0, 1.0]
    assert usage["requests"] == 2
    ground_truth = server.requests[0].user_content.split("[Ground truth]\n")[1].split("\n")[0]
    assert ground_truth == PAPER_NEEDLE


def test_a_run_with_a_judge_adds_its_score_and_heatmap(finished_run, tiny_chat_model, tokenizer, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    with LoopbackServer(lambda request: "Rating: [[4]]") as server:
        results = _run(
            tiny_chat_model, tokenizer, output_dir, judge_model="loopback-judge", judge_base_url=server.base_url
        )
    assert len(server.requests) == 2
    assert [record["judge_rating"] for record in results["records"]] == [4.0, 4.0]
    assert results["judge_scores"]["single"]["mean"] == 4.0
    assert results["judge_model"] == "loopback-judge"
    assert matplotlib.image.imread(output_dir / "heatmap_single_judge.png").ndim == 3


@pytest.fixture(scope="module")
def model_dir(tokenizer, tiny_chat_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-needle-model")
    tokenizer.save_pretrained(path)
    tiny_chat_model.save_pretrained(path)
    return path


def test_the_command_writes_results_heatmaps_and_summary(model_dir, tmp_path, capsys):
    out = tmp_path / "needle"
    argv = ["eval", "needle", "--model", str(model_dir), "--lengths", "800,1000,5000", "--depths", "2"]
    argv += ["--probes", "single,multivalue", "--max-new-tokens", "2", "--batch-size", "2", "--output-dir", str(out)]
    assert cli.main(argv) == 0

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    cells = {(r["probe"], r["length"], r["depth"]) for r in results["records"]}
    assert cells == {(p, n, d) for p in ("single", "multivalue") for n in (800, 1000) for d in (0, 100)}
    for record in results["records"]:
        assert abs(record["prompt_tokens"] - record["length"]) <= 3
        assert 0 <= record["score"] <= 1 and isinstance(record["answer"], str)
    assert results["skipped"] == [
        {"length": 5000, "reason": "5000 prompt + 2 new tokens exceed the model's 4096-token window"}
    ]
    assert set(results["scores"]) == {"single", "multivalue"}
    assert len((out / "needle.jsonl").read_text(encoding="utf-8").splitlines()) == 8
    for probe in ("single", "multivalue"):
        image = matplotlib.image.imread(out / f"heatmap_{probe}.png")
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 500
    summary = capsys.readouterr().out
    assert "| probe | mean | 800 | 1000 |" in summary and "| single |" in summary and "| multivalue |" in summary
    assert (out / "summary.md").read_text(encoding="utf-8").startswith("| probe | mean | 800 | 1000 |")
