"""LongBench-Chat's source files: where they are published, their checks, and one typed record per case.

The benchmark is published as three files in THUDM/LongAlign `LongBench_Chat/` (Apache-2.0): `test_cases.json`
(50 cases `{idx, query, answer, prompt, ...}`), `few_shots.json` (50 lists of scored example answers; list i belongs
to case idx i + 1) and `prompt_fs.txt` (the judge prompt template). `read_source` checks they line up and makes one
typed record per case; `LongBenchChatBuilder` (in `longalign_hf.data.longbench_chat.builder`, the `datasets` side)
reads them from a local folder (`data_dir`) or downloads them and yields those records:

| field            | type                            | what it is                                                 |
|------------------|---------------------------------|------------------------------------------------------------|
| `idx`            | int32                           | the case number in the source (1-based)                    |
| `query`          | string                          | the short question (what the judge sees)                   |
| `prompt`         | string                          | document + question, as the model sees it                  |
| `answer`         | string                          | the reference answer                                       |
| `few_shots`      | list of `{answer, score}`       | scored example answers for the judge (score: int32, 1-10)  |
| `language`       | string                          | `"en"` or `"zh"`, derived from the query's characters      |
| `length`         | int32                           | characters in `prompt` (tokens depend on the tokenizer)    |
| `judge_template` | string                          | `prompt_fs.txt`, the same in every row                     |

Configs: `all` (default), `en` and `zh`. The Hub-ready folder (`longalign_hf.data.longbench_chat.hub_folder`) holds
a config only when the source has a case for it: from a source with English cases only,
`datasets.load_dataset(OUT, "zh")` raises `BuilderConfig 'zh' not found. Available: ['all', 'en']` rather than loading
an empty split (the build logs that it left `zh` out), and the builder's `zh` config raises a `UserInputError` saying
so. The folder's dataset card is written by `longalign_hf.data.longbench_chat.card`, the command line is
`longalign_hf.data.longbench_chat.command`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from longalign_hf.data.longbench_chat.format import detect_language, few_shot_slots
from longalign_hf.errors import UserInputError

logger = logging.getLogger(__name__)

SOURCE_URL = "https://raw.githubusercontent.com/THUDM/LongAlign/main/LongBench_Chat/"
TEST_CASES, FEW_SHOTS, JUDGE_TEMPLATE = "test_cases.json", "few_shots.json", "prompt_fs.txt"
SOURCE_FILES = (TEST_CASES, FEW_SHOTS, JUDGE_TEMPLATE)
# Git blob id of the published test_cases.json (`git hash-object`), to check a download or a local copy against.
TEST_CASES_GIT_BLOB = "8afc5426134b8692b16fcf61c3f097db0025d6f4"
CONFIG_NAMES = ("all", "en", "zh")
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}

DESCRIPTION = (
    "LongBench-Chat: 50 real-world long-context queries (10k-100k tokens; English and Chinese) with reference "
    "answers and scored example answers, for judging long-context instruction following with an LLM judge "
    "(LongAlign, Bai et al., 2024)."
)
HOMEPAGE = "https://github.com/THUDM/LongAlign/tree/main/LongBench_Chat"


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file with these bytes (`git hash-object`): sha1 of `b"blob <size>\\0" + data`.

    Example:
        >>> git_blob_sha1(b"hello\\n")  # echo hello | git hash-object --stdin
        'ce013625030ba8dba906f756967f9e9ca394464a'
    """
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise UserInputError(
            f"{path}: LongBench-Chat source file not found; pass the folder that holds {', '.join(SOURCE_FILES)} "
            f"(from {SOURCE_URL}) as `--source` / `data_dir`, or leave it out to download them"
        ) from None


def check_release(path: str, downloaded: bool) -> None:
    """Compare `test_cases.json` with the published release's git blob: warn for a local copy, refuse a download."""
    blob = git_blob_sha1(_read_bytes(path))
    if blob == TEST_CASES_GIT_BLOB:
        return
    message = (
        f"{path} is git blob {blob}, not the published LongBench-Chat test cases ({TEST_CASES_GIT_BLOB}): scores on "
        "it are not comparable with published ones."
    )
    if downloaded:
        raise UserInputError(
            f"{message} The file at {SOURCE_URL} changed; download the release you want and pass its folder as "
            "`data_dir` / `--source`."
        )
    logger.warning(message)


def _read_json(path: str) -> Any:
    data = _read_bytes(path)
    if not data.strip():
        raise UserInputError(f"{path} is empty; download the file again from {SOURCE_URL}.")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not UTF-8 text ({exc}). Download the file again from {SOURCE_URL}.") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            f"Download the file again from {SOURCE_URL}."
        ) from None


def _check_case(path: str, position: int, case: Any, seen: set[int]) -> None:
    where = f"{path}: case {position}"
    if not isinstance(case, dict):
        raise UserInputError(
            f"{where} is a {type(case).__name__}, expected an object with idx, query, answer, prompt."
        )
    idx = case.get("idx")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 1:
        raise UserInputError(
            f"{where} has idx {idx!r}; idx must be an integer from 1 (it selects few_shots[idx - 1])."
        )
    where = f"{path}: case idx {idx}"
    if idx in seen:
        raise UserInputError(f"{where} appears twice; every case needs its own idx.")
    seen.add(idx)
    for key in ("query", "answer", "prompt"):
        if not isinstance(case.get(key), str) or not case[key].strip():
            raise UserInputError(f"{where}: `{key}` is {case.get(key)!r}, expected a non-empty string.")


def _check_few_shots(path: str, idx: int, shots: Any, slots: int, template_path: str) -> None:
    where = f"{path}: list {idx - 1} (for case idx {idx})"
    if not isinstance(shots, list) or len(shots) != slots:
        found = f"{len(shots)} entries" if isinstance(shots, list) else f"a {type(shots).__name__}"
        raise UserInputError(f"{where} has {found}, but the judge template {template_path} takes {slots} examples.")
    for number, shot in enumerate(shots):
        if not isinstance(shot, dict) or not isinstance(shot.get("answer"), str):
            raise UserInputError(
                f"{where}, example {number}: expected an object with a string `answer`, got {shot!r}."
            )
        score = shot.get("score")
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 10:
            raise UserInputError(f"{where}, example {number}: `score` is {score!r}, expected an integer from 1 to 10.")


def read_source(paths: dict[str, str]) -> list[dict[str, Any]]:
    """Read and check the three source files (`paths`: file name -> path); one record (see the module docstring) per
    case, in file order. A missing, malformed or misaligned file raises `UserInputError` naming the file and case."""
    template_path = paths[JUDGE_TEMPLATE]
    template_bytes = _read_bytes(template_path)
    try:
        template = template_bytes.decode("utf-8")
        slots = few_shot_slots(template)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserInputError(f"{template_path}: not a LongBench-Chat judge prompt template: {exc}") from None

    cases_path, shots_path = paths[TEST_CASES], paths[FEW_SHOTS]
    cases = _read_json(cases_path)
    if not isinstance(cases, list) or not cases:
        raise UserInputError(f"{cases_path}: expected a non-empty JSON list of cases, got {type(cases).__name__}.")
    few_shots = _read_json(shots_path)
    if not isinstance(few_shots, list):
        raise UserInputError(f"{shots_path}: expected a JSON list with one list of examples per case.")
    seen: set[int] = set()
    for position, case in enumerate(cases):
        _check_case(cases_path, position, case, seen)
        if case["idx"] > len(few_shots):
            raise UserInputError(
                f"{cases_path}: case idx {case['idx']} has no few-shot list: {shots_path} has {len(few_shots)} "
                f"lists (list i belongs to case idx i + 1). Use the two files from the same LongBench-Chat release."
            )
        _check_few_shots(shots_path, case["idx"], few_shots[case["idx"] - 1], slots, template_path)
    if len(few_shots) != len(cases):
        raise UserInputError(
            f"{shots_path} has {len(few_shots)} few-shot lists but {cases_path} has {len(cases)} cases; they must "
            "line up one to one. Use the two files from the same LongBench-Chat release."
        )
    return [
        {
            "idx": case["idx"],
            "query": case["query"],
            "prompt": case["prompt"],
            "answer": case["answer"],
            "few_shots": [{"answer": s["answer"], "score": s["score"]} for s in few_shots[case["idx"] - 1]],
            "language": detect_language(case["query"]),
            "length": len(case["prompt"]),
            "judge_template": template,
        }
        for case in cases
    ]


def check_source_folder(source_dir: str | Path) -> None:
    """Refuse a `--source` that is not a folder (a missing path, or one of the source files themselves)."""
    source = Path(source_dir)
    if source.is_dir():
        return
    if source.exists():
        parent = f" (here: {source.parent})" if source.name in SOURCE_FILES else ""
        raise UserInputError(
            f"--source {source} is a file: pass the folder that holds {', '.join(SOURCE_FILES)}{parent}, or leave "
            "--source out to download them"
        )
    raise UserInputError(
        f"--source {source}: no such folder; pass the folder that holds {', '.join(SOURCE_FILES)}, or leave "
        "--source out to download them"
    )
