"""`longalign data generate` end to end against a real OpenAI-compatible server on 127.0.0.1 (scripted replies)."""

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import huggingface_hub
import pytest
from loopback_server import LoopbackServer, Reply

from longalign_hf import cli
from longalign_hf.data.self_instruct.documents import load_documents
from longalign_hf.data.self_instruct.generator import generate_long_data
from longalign_hf.data.self_instruct.prompts import QUESTION_PROMPTS, TASK_TYPES, parse_questions, question_prompt
from longalign_hf.errors import UserInputError

QUESTIONS = [
    "Who built the mill?",
    "Why did the river flood?",
    "When was the bridge built?",
    "Where is it?",
    "How was it run?",
]
EN_SENTENCE = "The archive records the river trade of the valley and its mills. "
ZH_SENTENCE = "河谷的档案记录了河流贸易和磨坊的历史。"
ALL_PROMPTS = [prompt for prompts in QUESTION_PROMPTS.values() for prompt in prompts.values()]
MARKER = re.compile(r"\[(doc-[a-z0-9-]+)\]")


def _text(marker, size, sentence=EN_SENTENCE):
    """A document of at least `size` UTF-8 bytes (= byte-tokenizer tokens) that names itself."""
    text = f"[{marker}] "
    while len(text.encode("utf-8")) < size:
        text += sentence
    return text


def _questions(doc):
    return [f"{question} ({doc})" for question in QUESTIONS]


# How each document's question list comes back: the formats the parser must take.
def _colon(qs):
    return "\n".join(f"{i}: {q}" for i, q in enumerate(qs, 1))


def _dotted_with_preamble(qs):
    return "Sure! Here are five questions:\n\n" + "\n".join(f"{i}. {q}" for i, q in enumerate(qs, 1)) + "\n\nEnjoy."


def _bold(qs):
    return "\n".join(f"**{i}.** {q}" for i, q in enumerate(qs, 1))


def _q_prefix_and_parens(qs):
    return "\n".join(f"Q{i}: {q}" if i % 2 else f"{i}) {q}" for i, q in enumerate(qs, 1))


def _wrapped(qs):
    return "\n".join(
        f"{i}. {q.split(' ', 2)[0]} {q.split(' ', 2)[1]}\n   {q.split(' ', 2)[2]}" for i, q in enumerate(qs, 1)
    )


def _fullwidth(qs):
    return "\n".join(f"{i}：{q}" for i, q in enumerate(qs, 1))


FORMATS = {
    "doc-colon": _colon,
    "doc-dotted": _dotted_with_preamble,
    "doc-bold": _bold,
    "doc-qprefix": _q_prefix_and_parens,
    "doc-wrapped": _wrapped,
    "doc-zh": _fullwidth,
    "doc-flaky": _colon,  # 500, then 429, then a good list
    "doc-fixes": _colon,  # 4 questions, then a good list
    "doc-noanswer": _colon,  # its answer is always empty
}


class Script:
    """The server's side: question lists per document, answers that quote the question, scripted faults."""

    def __init__(self, hang_after_answers=None):
        self.hang_after_answers = hang_after_answers
        self.answers_served = 0
        self.served = []  # (messages key, prompt words) of every 200 reply sent
        self.hung = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, request):
        with self.lock:  # decide and count under the lock: concurrent answers must not slip past the limit
            hang = self.hang_after_answers is not None and self.answers_served >= self.hang_after_answers
            self.answers_served += not hang and not self.is_question_call(request)
        if hang:
            self.hung.set()
            self.release.wait(30)
            return Reply(status=503)
        reply = self.reply(request)
        if isinstance(reply, str):
            with self.lock:
                self.served.append((_key(request.messages), sum(len(m["content"].split()) for m in request.messages)))
        return reply

    @staticmethod
    def is_question_call(request):
        return any(request.user_content.endswith(prompt) for prompt in ALL_PROMPTS)

    def reply(self, request):
        doc = MARKER.search(request.user_content)[1]
        if not self.is_question_call(request):
            if doc == "doc-noanswer":
                return "   "
            return f"The answer to: {request.user_content.rsplit(chr(10), 1)[-1]}"
        if doc == "doc-malformed":
            return "1: Only\n2: three\n3: questions?"
        if doc == "doc-flaky" and request.attempt < 2:
            return Reply(status=500) if request.attempt == 0 else Reply(status=429, headers={"retry-after": "0"})
        if doc == "doc-fixes" and request.attempt == 0:
            return _colon(_questions(doc)[:4])
        return FORMATS.get(doc, _colon)(_questions(doc))


def _key(messages):
    return json.dumps(messages, sort_keys=True)


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _docs_folder(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    texts = {f"{name}.txt": _text(name, 600) for name in FORMATS if name != "doc-zh"}
    texts["doc-zh.txt"] = _text("doc-zh", 600, ZH_SENTENCE)
    texts["sub/doc-malformed.txt"] = _text("doc-malformed", 600)
    texts["doc-short.txt"] = _text("doc-short", 10)
    texts["doc-long.txt"] = _text("doc-long", 5000)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "notes.md").write_text("not matched by the glob", encoding="utf-8")
    return folder, texts


@pytest.mark.parametrize(
    "reply",
    [
        "1: A?\n2: B?\n3: C?\n4: D?\n5: E?",
        "1. A?\n2. B?\n3. C?\n4. D?\n5. E?",
        "1) A?\n2) B?\n3) C?\n4) D?\n5) E?",
        "Q1: A?\nQ2: B?\nQ3: C?\nQ4: D?\nQ5: E?",
        "**1.** A?\n**2.** B?\n**3.** C?\n**4.** D?\n**5.** E?",
        "**Q1:** **A?**\n**Q2:** B?\n- 3. C?\n(4) D?\nQuestion 5: E?",
        "1：A?\n2：B?\n3、C?\n问题4：D?\n5．E?",
        "Here they are:\n\n1:\nA?\n\n2:\nB?\n3: C?\n4: D?\n5: E?\n6: F?\n\nHope this helps! 7: G?",
    ],
)
def test_parse_questions_formats(reply):
    assert parse_questions(reply) == ["A?", "B?", "C?", "D?", "E?"]


def test_parse_questions_wrapped_lines_decimals_and_too_few():
    wrapped = "1. How did the\n   mill work?\n2. What rose\nby 1.5 metres?\n3. C?\n4. D?\n5. E?\n\nThose are all."
    assert parse_questions(wrapped) == ["How did the mill work?", "What rose by 1.5 metres?", "C?", "D?", "E?"]
    # Numbers must run 1, 2, 3, ...: a "2019." line inside a question is text, and a list that skips a number ends.
    assert parse_questions("1: A?\n2: In which year,\n2019. or later?\n3: C?\n4: D?\n5: E?")[1] == (
        "In which year, 2019. or later?"
    )
    assert parse_questions("1: A?\n2: B?\n4: D?\n5: E?\n6: F?") is None
    assert parse_questions("1: A?\n2: B?\n3: C?\n4: D?") is None
    assert parse_questions("1: A?\n2: B?\n3: C?\n4: D?\n5:") is None
    assert parse_questions("No list here.") is None


def test_end_to_end_generation_filters_retries_and_failures(tmp_path, tokenizer):
    folder, texts = _docs_folder(tmp_path)
    script = Script()
    with LoopbackServer(script) as server:
        report = generate_long_data(
            str(folder),
            tmp_path / "long.jsonl",
            "loopback-llm",
            base_url=server.base_url,
            tokenizer=tokenizer,
            min_tokens=100,
            max_tokens=3000,
            max_retries=2,
            backoff=0.001,
            max_concurrency=3,
            batch_size=4,
        )
    eligible = {name for name in texts if name not in ("doc-short.txt", "doc-long.txt")}
    assert (report.seen, report.too_short, report.too_long) == (len(texts), 1, 1)
    assert set(report.failed) == {"sub/doc-malformed.txt", "doc-noanswer.txt"}
    # Said as what it is, not in a judge's words ("no rating in it"), with the last reply quoted.
    assert report.failed["sub/doc-malformed.txt"] == (
        "question list: no reply held a numbered list of 5 questions (3 requests); last reply: "
        "'1: Only\\n2: three\\n3: questions?'"
    )
    assert (
        report.failed["doc-noanswer.txt"] == "answer: no reply held a non-empty answer (3 requests); last reply: '   '"
    )
    assert report.generated == len(eligible) - 2 and report.already_done == 0

    records = _read(tmp_path / "long.jsonl")
    assert sorted(r["doc_id"] for r in records) == sorted(eligible - {"sub/doc-malformed.txt", "doc-noanswer.txt"})
    prompts_seen = {
        MARKER.search(r.user_content)[1]: r.user_content for r in server.requests if Script.is_question_call(r)
    }
    for record in records:
        doc = record["doc_id"].removesuffix(".txt")
        text = texts[record["doc_id"]]
        assert record["questions"] == _questions(doc)  # every list format parsed back to the same questions
        user, assistant = record["messages"]
        question = user["content"].removeprefix(text + "\n\n")
        assert user == {"role": "user", "content": text + "\n\n" + question} and question in record["questions"]
        assert assistant == {"role": "assistant", "content": f"The answer to: {question}"}
        assert record["language"] == ("zh" if doc == "doc-zh" else "en")
        assert record["task_type"] in TASK_TYPES
        # The prompt the server received: the document, then the drawn task's prompt in the document's language.
        assert prompts_seen[doc] == text + "\n\n" + question_prompt(record["task_type"], record["language"])
        assert record["doc_tokens"] == len(text.encode("utf-8"))
        assert record["prompt_tokens"] == len(user["content"].encode("utf-8"))
        assert record["answer_tokens"] == len(assistant["content"].encode("utf-8"))
        assert record["generator_model"] == "loopback-llm"
    assert "请根据以上文本" in prompts_seen["doc-zh"]
    assert len({record["task_type"] for record in records}) > 1  # drawn, not fixed

    calls = [MARKER.search(r.user_content)[1] for r in server.requests if Script.is_question_call(r)]
    assert calls.count("doc-flaky") == 3 and calls.count("doc-fixes") == 2 and calls.count("doc-malformed") == 3
    assert report.usage["requests"] == len(server.requests)
    assert report.usage["prompt_tokens"] == sum(words for _, words in script.served)  # the server counts words
    assert report.usage["cached"] == 0
    assert not any("doc-short" in r.user_content or "doc-long" in r.user_content for r in server.requests)


def test_crash_and_resume(tmp_path, tokenizer, caplog):
    """Kill a CLI run while requests hang, cut its last line short, rerun: no duplicate, nothing paid twice."""
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = {f"doc-{i}.txt": _text(f"doc-{i}", 300 + 10 * i) for i in range(8)}
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    out, cache = tmp_path / "long.jsonl", tmp_path / "cache"
    options = ["--min-tokens", "100", "--max-tokens", "3000", "--concurrency", "2", "--batch-size", "2"]
    options += ["--cache-dir", str(cache), "--tokenizer", str(tmp_path / "tokenizer")]

    first = Script(hang_after_answers=3)
    with LoopbackServer(first) as server:
        command = [sys.executable, "-m", "longalign_hf.cli", "data", "generate", "--docs", str(folder)]
        command += ["--out", str(out), "--model", "loopback-llm", "--base-url", server.base_url, *options]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "unused"}
        log = tmp_path / "first_run.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            assert first.hung.wait(120), log.read_text()
            time.sleep(0.5)  # let the client finish with the replies it already has
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        finally:
            first.release.set()
    written = _read(out)
    assert len(written) == 3  # the three answers served before the hang, each on its own complete line
    with out.open("ab") as f:
        f.write(b'{"messages": [{"role": "user", "content": "cut sh')  # a crash in the middle of a write

    second = Script()
    with LoopbackServer(second) as server:
        cli.main(["data", "generate", "--docs", str(folder), "--out", str(out), "--model", "loopback-llm"]
                 + ["--base-url", server.base_url, *options])  # fmt: skip
        resent = {_key(r.messages) for r in server.requests} & {key for key, _ in first.served}
        asked = [MARKER.search(r.user_content)[1] for r in server.requests]
    assert "ended in a line cut short by a crash (49 bytes); it is removed" in caplog.text
    assert not resent  # replies received before the crash came from the cache
    assert not {record["doc_id"].removesuffix(".txt") for record in written} & set(asked)  # done: not asked
    records = _read(out)
    assert records[:3] == written  # appended after what was there, the cut-short line gone
    assert sorted(record["doc_id"] for record in records) == sorted(texts)  # all documents, each once

    # A third run has nothing to do and sends nothing.
    with LoopbackServer(Script()) as server:
        report = generate_long_data(
            str(folder), out, "loopback-llm", base_url=server.base_url, tokenizer=tokenizer, min_tokens=100,
            max_tokens=3000, cache_dir=cache,
        )  # fmt: skip
    assert (report.already_done, report.generated, len(server.requests)) == (8, 0, 0)
    assert not report.dropped_partial_line


def test_num_docs_counts_documents_within_bounds(tmp_path, tokenizer):
    rows = [{"body": _text(f"doc-r{i}", 50 if i % 2 else 400), "uid": f"u{i}"} for i in range(8)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with LoopbackServer(Script()) as server:
        report = generate_long_data(
            str(path), tmp_path / "out.jsonl", "loopback-llm", base_url=server.base_url, tokenizer=tokenizer,
            num_docs=3, min_tokens=100, text_column="body", id_column="uid",
        )  # fmt: skip
    assert sorted(r["doc_id"] for r in _read(tmp_path / "out.jsonl")) == ["u0", "u2", "u4"]
    assert (report.seen, report.too_short, report.generated) == (5, 2, 3)


def test_document_sources_and_their_errors(tmp_path):
    rows = [{"text": "first document", "id": 7}, {"text": "", "id": 8}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "docs.parquet"))
    assert list(load_documents(str(tmp_path / "docs.parquet"))) == [("row-0", "first document"), ("row-1", "")]
    assert list(load_documents(str(tmp_path / "docs.parquet"), id_column="id"))[0] == ("7", "first document")
    with pytest.raises(
        UserInputError, match=r"docs.parquet: no column 'body' \(columns: text, id\); pass --text-column"
    ):
        list(load_documents(str(tmp_path / "docs.parquet"), text_column="body"))

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.md").write_text("markdown", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"no file matches --glob '\*\*/\*.txt'; pass another --glob"):
        list(load_documents(str(folder)))
    assert list(load_documents(str(folder), glob="*.md")) == [("a.md", "markdown")]
    (folder / "b.txt").write_bytes(b"\xff\xfe latin-1 \xe9")
    with pytest.raises(UserInputError, match=r"b.txt: not UTF-8 text .*; convert it to UTF-8, remove it, or narrow"):
        list(load_documents(str(folder)))


def test_output_of_another_model_or_not_records_is_refused(tmp_path, tokenizer):
    out = tmp_path / "long.jsonl"
    out.write_text(json.dumps({"doc_id": "a.txt", "generator_model": "model-a", "messages": []}) + "\n")
    options = {"base_url": "http://127.0.0.1:9/v1", "tokenizer": tokenizer}
    with pytest.raises(UserInputError, match=r"long.jsonl, line 1: generated by 'model-a', not 'model-b'"):
        generate_long_data(str(tmp_path), out, "model-b", **options)
    out.write_text('{"text": "a note"}\n')
    with pytest.raises(UserInputError, match=r"long.jsonl, line 1: not a record written by `longalign data generate`"):
        generate_long_data(str(tmp_path), out, "model-b", **options)


def test_cli_registers_generate():
    args = cli.build_parser().parse_args(["data", "generate", "--docs", "d", "--out", "o.jsonl", "--model", "m"])
    assert (args.num_docs, args.min_tokens, args.max_tokens, args.base_url) == (None, 8000, 64000, None)
    assert args.allow_incomplete is False
    assert callable(args.func)


def _small_folder(tmp_path, names):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in names:
        (folder / f"{name}.txt").write_text(_text(name, 300), encoding="utf-8")
    return folder


def _failing_for(failures):
    """A responder: good replies, except HTTP `status` for the (document, step) pairs in `failures`."""

    def respond(request):
        doc = MARKER.search(request.user_content)[1]
        step = "questions" if Script.is_question_call(request) else "answer"
        if (doc, step) in failures:
            return Reply(status=failures[doc, step])
        return Script().reply(request)

    return respond


def test_failed_documents_are_warned_counted_and_exit_1_unless_allowed(tmp_path, tokenizer, caplog, capsys):
    folder = _small_folder(tmp_path, ["doc-a", "doc-b", "doc-c"])
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "long.jsonl"
    command = ["data", "generate", "--docs", str(folder), "--out", str(out), "--model", "loopback-llm"]
    command += ["--tokenizer", str(tmp_path / "tokenizer"), "--min-tokens", "100", "--max-retries", "0"]
    respond = _failing_for({("doc-b", "questions"): 500, ("doc-c", "answer"): 503})
    with LoopbackServer(respond) as server, caplog.at_level(logging.WARNING):
        assert cli.main([*command, "--base-url", server.base_url]) == 1
        printed = capsys.readouterr().out
        assert [r["doc_id"] for r in _read(out)] == ["doc-a.txt"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(w.startswith("doc-b.txt: no sample; question list: HTTP 500") for w in warnings), warnings
        assert any(w.startswith("doc-c.txt: no sample; answer: HTTP 503") for w in warnings), warnings
        assert "1 generated, 2 produced no sample (failed)" in printed
        assert "2 documents produced no sample: exit status 1" in printed and "--allow-incomplete" in printed

        # The rerun retries the two failed documents only; with --allow-incomplete it exits 0 though they fail again.
        asked_before = len(server.requests)
        assert cli.main([*command, "--base-url", server.base_url, "--allow-incomplete"]) == 0
        asked = {MARKER.search(r.user_content)[1] for r in server.requests[asked_before:]}
    assert asked == {"doc-b", "doc-c"}
    assert "1 already done, 0 generated, 2 produced no sample (failed)" in capsys.readouterr().out


def test_a_run_that_produces_nothing_leaves_no_output(tmp_path, tokenizer, caplog):
    folder = _small_folder(tmp_path, ["doc-a", "doc-b"])
    out = tmp_path / "new" / "long.jsonl"
    respond = _failing_for({("doc-a", "questions"): 500, ("doc-b", "questions"): 500})
    with LoopbackServer(respond) as server, caplog.at_level(logging.WARNING):
        report = generate_long_data(
            str(folder), out, "loopback-llm", base_url=server.base_url, tokenizer=tokenizer, min_tokens=100,
            max_retries=0,
        )  # fmt: skip
    assert (report.generated, sorted(report.failed)) == (0, ["doc-a.txt", "doc-b.txt"])
    assert not (tmp_path / "new").exists()  # neither the file nor its folder, nor a cache of no replies
    assert "2 documents produced no sample" in caplog.text


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("docs.jsonl", "", r"docs.jsonl is empty"),
        ("docs.jsonl", '{"text": "a"}\n{"text": \n{"text": "c"}\n', r"docs.jsonl, line 2: not valid JSON"),
        ("docs.json", '[{"text": "a"},\n {"text": }]', r"docs.json, line 2: not valid JSON"),
        ("book.txt", "one document", r"--docs .*book.txt: a .txt file is not a document source; put the documents"),
        ("docs.jsonl", '{"text": 2}\n\n{"text": 3}\n', r"docs.jsonl, line 1: 'text' is not text but int 2; pass"),
        ("docs.jsonl", '{"text": "a"}\n\n{"text": null}\n', r"docs.jsonl, line 3: 'text' is null, not a document"),
        ("docs.jsonl", '{"text": "a", "id": 1}\n{"text": "b", "id": 1}\n', r"document id '1' appears twice"),
    ],
    ids=["empty", "malformed-line", "malformed-json", "text-file", "not-text", "null-text", "duplicate-id"],
)
def test_bad_document_sources_name_file_and_line_and_leave_no_output(tmp_path, tokenizer, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    out = tmp_path / "long.jsonl"
    with pytest.raises(UserInputError, match=message):
        generate_long_data(
            str(tmp_path / name), out, "m", base_url="http://127.0.0.1:9/v1", tokenizer=tokenizer, min_tokens=1,
            id_column="id" if "id" in content else None,
        )  # fmt: skip
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]


def test_options_and_outputs_that_cannot_work_are_refused(tmp_path, tokenizer, monkeypatch):
    options = {"base_url": "http://127.0.0.1:9/v1", "tokenizer": tokenizer}
    with pytest.raises(UserInputError, match=r"--min-tokens \(9000\) is above --max-tokens \(8000\)"):
        generate_long_data(str(tmp_path), tmp_path / "o.jsonl", "m", min_tokens=9000, max_tokens=8000, **options)
    with pytest.raises(UserInputError, match=r"--num-docs must be at least 1, got 0"):
        generate_long_data(str(tmp_path), tmp_path / "o.jsonl", "m", num_docs=0, **options)
    with pytest.raises(UserInputError, match=r"--concurrency must be at least 1 .*, got 0 and 5"):
        generate_long_data(str(tmp_path), tmp_path / "o.jsonl", "m", max_concurrency=0, **options)
    with pytest.raises(UserInputError, match=r"--out .* is a folder"):
        generate_long_data(str(tmp_path), tmp_path, "m", **options)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as offline: never touch the network
    with pytest.raises(UserInputError, match=r"tokenizer 'longalign-tests/none' .*pass `--tokenizer PATH_OR_ID`"):
        generate_long_data(str(tmp_path), tmp_path / "o.jsonl", "m", base_url=options["base_url"],
                           tokenizer="longalign-tests/none")  # fmt: skip
    assert not (tmp_path / "o.jsonl").exists()


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path, tokenizer):
    folder = _small_folder(tmp_path, ["doc-a", "doc-b"])
    out = tmp_path / "long.jsonl"
    options = {"tokenizer": tokenizer, "min_tokens": 100}
    with LoopbackServer(Script()) as server:
        generate_long_data(str(folder), out, "loopback-llm", base_url=server.base_url, num_docs=1, **options)
        first = out.read_bytes()
        out.write_bytes(first.removesuffix(b"\n"))  # a crash between the record and its newline
        report = generate_long_data(str(folder), out, "loopback-llm", base_url=server.base_url, **options)
    assert (report.already_done, report.generated, report.dropped_partial_line) == (1, 1, False)
    assert out.read_bytes().startswith(first)
    assert [record["doc_id"] for record in _read(out)] == ["doc-a.txt", "doc-b.txt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--temperature", "-1"], "argument --temperature: '-1' is not a number of at least 0"),
        (["--timeout", "0"], "argument --timeout: '0' is not a number above 0"),
        (["--max-retries", "-1"], "argument --max-retries: '-1' is not a whole number of at least 0"),
        (["--concurrency", "0"], "argument --concurrency: '0' is not a whole number of at least 1"),
        (["--batch-size", "0"], "argument --batch-size: '0' is not a whole number of at least 1"),
        (["--num-docs", "0"], "argument --num-docs: '0' is not a whole number of at least 1"),
        (["--max-new-tokens", "0"], "argument --max-new-tokens: '0' is not a whole number of at least 1"),
        (["--min-tokens", "-5"], "argument --min-tokens: '-5' is not a whole number of at least 0"),
        (["--max-tokens", "0"], "argument --max-tokens: '0' is not a whole number of at least 1"),
        (["--seed", "-1"], "argument --seed: '-1' is not a seed"),
    ],
)
def test_bad_numbers_are_argument_errors_as_in_the_evaluations(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["data", "generate", "--docs", "d", "--out", "o.jsonl", "--model", "m", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bad_numbers_passed_in_python_are_refused_before_anything(tmp_path, tokenizer):
    options = {"base_url": "http://127.0.0.1:9/v1", "tokenizer": tokenizer}
    for option in ({"temperature": -1.0}, {"timeout": 0.0}, {"max_new_tokens": 0}, {"min_tokens": -1}):
        with pytest.raises(UserInputError, match=r"--timeout above 0 and --max-new-tokens at least 1, got"):
            generate_long_data(str(tmp_path), tmp_path / "o.jsonl", "m", **options, **option)
    assert not (tmp_path / "o.jsonl").exists()


def test_outputs_that_cannot_be_written_name_their_flag(tmp_path, tokenizer, monkeypatch):
    folder = _small_folder(tmp_path, ["doc-a"])
    (tmp_path / "a-file").write_text("x")
    options = {"tokenizer": tokenizer, "min_tokens": 100}
    with LoopbackServer(Script()) as server:
        for out, cache_dir, message in [
            (tmp_path / "a-file" / "long.jsonl", None, r"^--out \S+long.jsonl: \S+a-file is a file, so nothing can"),
            (tmp_path / "long.jsonl", tmp_path / "a-file" / "c", r"^--cache-dir \S+c: \S+a-file is a file, so"),
            (tmp_path / ("x" * 300 + ".jsonl"), None, r"^--out \S+: File name too long; pass another path"),
        ]:
            with pytest.raises(UserInputError, match=message):
                generate_long_data(str(folder), out, "m", base_url=server.base_url, cache_dir=cache_dir, **options)
        assert not server.requests  # refused before any call

        # Allowed by the permissions, refused by the file system (as /proc): caught where the file is made.
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self.name == "read-only":
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
        out = tmp_path / "read-only" / "long.jsonl"
        with pytest.raises(UserInputError, match=r"^--out \S+: cannot write there \(Read-only file system\); pass a"):
            generate_long_data(str(folder), out, "m", base_url=server.base_url, cache_dir=tmp_path / "c", **options)


def test_a_bad_parquet_source_is_one_message_without_the_librarys_own_error_lines(tmp_path, caplog):
    (tmp_path / "docs.parquet").write_text("not parquet", encoding="utf-8")
    with caplog.at_level(logging.DEBUG), pytest.raises(UserInputError, match=r"docs.parquet: could not be read"):
        list(load_documents(str(tmp_path / "docs.parquet")))
    assert not [r for r in caplog.records if r.name.startswith("datasets") and r.levelno >= logging.WARNING]
