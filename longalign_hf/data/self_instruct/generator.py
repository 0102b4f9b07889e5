"""`longalign data generate`: long-context instruction data by Self-Instruct from long documents, as in LongAlign.

```
longalign data generate --docs my_corpus/ --out data/long.jsonl --model Qwen/Qwen2.5-72B-Instruct \\
    --base-url http://localhost:8000/v1 --num-docs 1000
```

For each document whose length in tokens of `tokenizer` lies within `[min_tokens, max_tokens]` (the paper: 8k-64k),
one of the four task types of the paper (`TASK_TYPES`) is drawn at random, the LLM is asked for 5 questions with that
task's prompt after the document, one of the questions is drawn at random, and the same LLM answers it with the
document in context. The draws are seeded per document (`seed` and the document id), so a rerun asks the same
things. Documents are Chinese when CJK characters make up at least a quarter of their CJK and Latin letters
(`longalign_hf.data.longbench_chat.format.detect_language`; a Chinese character carries about as much as a few Latin
letters); they get the Chinese translations of the prompts.

The output is append-only JSONL, one record per line:
`{"messages": [{"role": "user", "content": DOC + "\\n\\n" + QUESTION}, {"role": "assistant", "content": ANSWER}],
"doc_id", "task_type", "questions" (all 5), "doc_tokens", "prompt_tokens" (the user turn), "answer_tokens",
"language", "generator_model"}`, ready for `longalign data build sft --long FILE`. A record is written, in one write
with flush and fsync, only when both calls succeeded and parsed; a reply without 5 numbered questions or an empty
answer is asked again (`max_retries` times) and then counted as failed: each failed document is logged as a warning,
the summary counts them, and the command exits with status 1 (0 with `--allow-incomplete`). The output file is
created with its first record, so a run that produces nothing leaves none behind. A rerun skips documents already in
the output, drops a last line cut short by a crash, and gets replies it already paid for from the on-disk cache
(`OUT.cache/` by default), so failed documents are retried and nothing is paid or written twice.

Sources (`documents.load_documents`, in this folder): a folder of text files (`glob`, default `**/*.txt`; document
id: the path under the folder), a .jsonl, .json or .parquet file, or a Hub data set id, with a `text_column`
(document id: the `id_column`, or `row-N`). The prompts and the parser of their replies are in `prompts`, the command
line in `command`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from longalign_hf import command_args
from longalign_hf.data.self_instruct.documents import load_documents
from longalign_hf.data.self_instruct.prompts import NUM_QUESTIONS, TASK_TYPES, parse_questions, question_prompt
from longalign_hf.data.tokenizer import DEFAULT_TOKENIZER, load_tokenizer
from longalign_hf.errors import UserInputError, iter_jsonl

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from longalign_hf.llm_client import ChatClient, ChatResult

logger = logging.getLogger(__name__)


@dataclass
class GenerationReport:
    """What a `generate_long_data` run did: documents seen, filtered, generated, failed, and the tokens it paid for.

    `usage` counts this run's requests only (replies from the cache are free and counted in `usage["cached"]`);
    `failed` maps document ids to why they produced no sample; `dropped_partial_line` is set when the output ended in
    a line cut short by a crash, which was removed.
    """

    out: str
    seen: int = 0
    too_short: int = 0
    too_long: int = 0
    already_done: int = 0
    generated: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    usage: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("prompt_tokens", "completion_tokens", "requests", "cached"), 0)
    )
    dropped_partial_line: bool = False

    def summary(self) -> str:
        return (
            f"{self.out}: {self.seen} documents seen, {self.too_short} too short and {self.too_long} too long "
            f"(filtered), {self.already_done} already done, {self.generated} generated, {len(self.failed)} produced "
            f"no sample (failed); {self.usage['requests']} requests, {self.usage['prompt_tokens']} prompt + "
            f"{self.usage['completion_tokens']} completion tokens, {self.usage['cached']} replies from the cache"
        )


@dataclass
class _Job:
    doc_id: str
    text: str
    language: str
    task_type: str
    question_index: int
    doc_tokens: int
    questions: list[str] | None = None


def _cut_last_line(path: Path) -> bytes:
    """The bytes after the last newline of `path`: a line cut short by a crash, or `b""` when it ends in a newline."""
    with path.open("rb") as f:
        end, tail = f.seek(0, os.SEEK_END), b""
        while end > 0 and b"\n" not in tail:
            start = max(0, end - (1 << 16))
            f.seek(start)
            tail = f.read(end - start) + tail
            end = start
    return tail.rpartition(b"\n")[2]


def _read_done(path: Path, model: str) -> tuple[set[str], bool]:
    """Document ids already in the output, and whether a last line cut short by a crash was truncated away."""
    done: set[str] = set()
    if not path.exists():
        return done, False
    for number, record in iter_jsonl(path, skip_cut_last_line=True):
        try:
            doc_id, saved_model = record["doc_id"], record["generator_model"]
        except (KeyError, TypeError):
            raise UserInputError(
                f"{path}, line {number}: not a record written by `longalign data generate`; pass another --out (or "
                "move the file away to start over)"
            ) from None
        if saved_model != model:
            raise UserInputError(
                f"{path}, line {number}: generated by {saved_model!r}, not {model!r}; pass another --out to keep the "
                "models apart (or the same --model to continue)"
            )
        done.add(doc_id)
    cut = _cut_last_line(path)
    if not cut:
        return done, False
    try:
        json.loads(cut)  # whole (and read above): only its newline is missing
    except ValueError:
        size = path.stat().st_size
        logger.warning(
            "%s ended in a line cut short by a crash (%d bytes); it is removed and its document generated again.",
            path,
            len(cut),
        )
        os.truncate(path, size - len(cut))
        return done, True
    with path.open("ab") as f:
        f.write(b"\n")
    return done, False


def _num_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _has_questions(reply: str) -> bool:
    return parse_questions(reply) is not None


def _has_answer(reply: str) -> bool:
    return bool(reply.strip())


def _failure(step: str, wanted: str, result: ChatResult, usable: Callable[[str], bool]) -> str:
    """Why a call gave nothing usable, in this step's words: what the reply lacked, or the endpoint's error."""
    if result.text is not None and not usable(result.text):
        return f"{step}: no reply held {wanted} ({result.requests} requests); last reply: {result.text!r:.120}"
    return f"{step}: {result.error}"


class _Generator:
    """One run: the client, the tokenizer, the output (opened at its first record) and the report, over batches."""

    def __init__(self, client: ChatClient, tokenizer: PreTrainedTokenizerBase, out: Path, report: GenerationReport):
        self.client, self.tokenizer, self.out_path, self.report = client, tokenizer, out, report
        self.out: BinaryIO | None = None

    def close(self) -> None:
        if self.out is not None:
            self.out.close()

    def _add_usage(self, results: list[ChatResult]) -> None:
        from longalign_hf.llm_client import total_usage

        usage = total_usage(results)
        for key in self.report.usage:
            self.report.usage[key] += usage[key]

    def _fail(self, job: _Job, reason: str) -> None:
        self.report.failed[job.doc_id] = reason
        logger.warning("%s: no sample; %s", job.doc_id, reason)

    def _write(self, job: _Job, answer: str) -> None:
        user = job.text + "\n\n" + job.questions[job.question_index]
        record = {
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "doc_id": job.doc_id,
            "task_type": job.task_type,
            "questions": job.questions,
            "doc_tokens": job.doc_tokens,
            "prompt_tokens": _num_tokens(self.tokenizer, user),
            "answer_tokens": _num_tokens(self.tokenizer, answer),
            "language": job.language,
            "generator_model": self.client.model,
        }
        if self.out is None:  # created with its first record: a run that produces nothing leaves no empty file
            try:
                self.out_path.parent.mkdir(parents=True, exist_ok=True)
                self.out = self.out_path.open("ab")
            except OSError as error:
                raise UserInputError(
                    f"--out {self.out_path}: cannot write there ({error.strerror or type(error).__name__}); pass a "
                    "file you can write to (the replies received are cached: the rerun pays for none of them again)"
                ) from None
        # One write of a whole line, flushed to disk: a crash leaves whole records and at most one cut-short last line.
        self.out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.out.flush()
        os.fsync(self.out.fileno())
        self.report.generated += 1

    def run_batch(self, jobs: list[_Job]) -> None:
        prompts = [
            [{"role": "user", "content": job.text + "\n\n" + question_prompt(job.task_type, job.language)}]
            for job in jobs
        ]
        results = self.client.complete(prompts, validate=_has_questions, desc="questions")
        self._add_usage(results)
        ready = []
        for job, result in zip(jobs, results):
            if result.error is not None:
                wanted = f"a numbered list of {NUM_QUESTIONS} questions"
                self._fail(job, _failure("question list", wanted, result, _has_questions))
                continue
            job.questions = parse_questions(result.text)
            ready.append(job)

        def save(index: int, result: ChatResult) -> None:
            if result.error is not None:
                self._fail(ready[index], _failure("answer", "a non-empty answer", result, _has_answer))
            else:
                self._write(ready[index], result.text)

        prompts = [
            [{"role": "user", "content": job.text + "\n\n" + job.questions[job.question_index]}] for job in ready
        ]
        results = self.client.complete(prompts, validate=_has_answer, desc="answers", on_result=save)
        self._add_usage(results)


def generate_long_data(
    docs: str,
    out: str | os.PathLike,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    num_docs: int | None = None,
    tokenizer: str | PreTrainedTokenizerBase = DEFAULT_TOKENIZER,
    min_tokens: int = 8_000,
    max_tokens: int = 64_000,
    text_column: str = "text",
    id_column: str | None = None,
    name: str | None = None,
    split: str = "train",
    glob: str = "**/*.txt",
    seed: int = 42,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    max_concurrency: int = 8,
    timeout: float = 600.0,
    max_retries: int = 5,
    backoff: float = 1.0,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> GenerationReport:
    """Generate long-context instruction data from the documents in `docs` into the JSONL file `out` (resumable).

    See the module docstring for the method and the record; `longalign_hf.data.self_instruct.command` documents every option (the
    CLI's help). The output file is created with its first record, so a run that produces nothing leaves none behind;
    a document that produces no sample is logged as a warning when it fails and listed in the report's `failed`.

    Args:
        docs: a folder of text files, a .jsonl/.json/.parquet file, or a Hub data set id.
        out: the JSONL file to append records to; documents already in it are skipped.
        model: the model name sent to the server, recorded in every record.
        base_url: an OpenAI-compatible server (e.g. `vllm serve MODEL`: `http://localhost:8000/v1`); `None`: OpenAI.
        num_docs: stop after this many documents within the length bounds (those already done included).
        tokenizer: tokenizer (or its Hub id or folder) the length bounds are counted in; use the one of the model you
            will train, whose context the bounds are about.

    Returns:
        A `GenerationReport` (its summary is logged too).
    """
    from tqdm.auto import tqdm

    from longalign_hf.data.longbench_chat.format import detect_language
    from longalign_hf.llm_client import ChatClient

    if min_tokens > max_tokens:
        raise UserInputError(f"--min-tokens ({min_tokens}) is above --max-tokens ({max_tokens}); swap or fix them")
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
    if num_docs is not None and num_docs < 1:
        raise UserInputError(f"--num-docs must be at least 1, got {num_docs}; leave it out to use every document")
    if max_concurrency < 1 or max_retries < 0:
        raise UserInputError(
            f"--concurrency must be at least 1 and --max-retries 0 or more, got {max_concurrency} and {max_retries}"
        )
    if min_tokens < 0 or temperature < 0 or not timeout > 0 or (max_new_tokens is not None and max_new_tokens < 1):
        raise UserInputError(
            "--min-tokens and --temperature must be 0 or more, --timeout above 0 and --max-new-tokens at least 1, got "
            f"{min_tokens}, {temperature}, {timeout} and {max_new_tokens}"
        )
    out = Path(out)
    command_args.check_can_create(out, "--out", kind="file", wanted="the JSONL file to append records to")
    cache_dir = cache_dir if cache_dir is not None else out.with_name(out.name + ".cache")
    command_args.check_can_create(cache_dir, "--cache-dir")
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    client = ChatClient(
        model,
        base_url=base_url,
        api_key=api_key,
        temperature=temperature,
        max_concurrency=max_concurrency,
        timeout=timeout,
        max_retries=max_retries,
        backoff=backoff,
        cache_dir=cache_dir,
        max_tokens=max_new_tokens,
        seed=seed,
    )
    done, partial = _read_done(out, model)
    report = GenerationReport(out=str(out), dropped_partial_line=partial)
    seen_ids: set[str] = set()
    selected = 0
    with (
        closing(_Generator(client, tok, out, report)) as generator,
        tqdm(total=num_docs, desc="documents", unit="doc") as progress,
    ):
        batch: list[_Job] = []
        for doc_id, text in load_documents(docs, text_column, id_column, name, split, glob):
            if num_docs is not None and selected >= num_docs:
                break
            if doc_id in seen_ids:
                raise UserInputError(
                    f"--docs {docs}: document id {doc_id!r} appears twice; pass an --id-column of unique ids"
                )
            seen_ids.add(doc_id)
            report.seen += 1
            if doc_id in done:
                report.already_done += 1
                selected += 1
                progress.update()
                continue
            doc_tokens = _num_tokens(tok, text)
            if doc_tokens < min_tokens:
                report.too_short += 1
                continue
            if doc_tokens > max_tokens:
                report.too_long += 1
                continue
            rng = random.Random(f"{seed}:{doc_id}")  # per document: the same draws whatever ran before
            task_type = rng.choice(TASK_TYPES)
            question_index = rng.randrange(NUM_QUESTIONS)
            batch.append(_Job(doc_id, text, detect_language(text), task_type, question_index, doc_tokens))
            selected += 1
            if len(batch) == batch_size:
                generator.run_batch(batch)
                progress.update(len(batch))
                batch = []
        if batch:
            generator.run_batch(batch)
            progress.update(len(batch))
    if not selected:
        logger.warning(
            "No document of %s is within --min-tokens %d and --max-tokens %d tokens of %s (%d too short, %d too "
            "long): nothing to generate.",
            docs,
            min_tokens,
            max_tokens,
            getattr(tok, "name_or_path", "the tokenizer"),
            report.too_short,
            report.too_long,
        )
    (logger.warning if report.failed else logger.info)(report.summary())
    if report.failed:
        logger.warning(
            "%d documents produced no sample (each logged above); rerun the same command to retry them, replies "
            "already received are cached.",
            len(report.failed),
        )
    return report
