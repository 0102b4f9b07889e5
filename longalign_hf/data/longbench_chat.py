"""LongBench-Chat as a `datasets` builder, and `longalign data build longbench-chat` to make a Hub-ready folder.

The benchmark is published as three files in THUDM/LongAlign `LongBench_Chat/` (Apache-2.0): `test_cases.json`
(50 cases `{idx, query, answer, prompt, ...}`), `few_shots.json` (50 lists of scored example answers; list i belongs
to case idx i + 1) and `prompt_fs.txt` (the judge prompt template). `LongBenchChatBuilder` reads them from a local
folder (`data_dir`) or downloads them, checks they line up, and yields one typed record per case:

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

Configs: `all` (default), `en` and `zh`.

```python
builder = LongBenchChatBuilder(config_name="en", data_dir="path/to/LongBench_Chat")
builder.download_and_prepare()
dataset = builder.as_dataset(split="test")
```
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData

from longalign_hf.data.hub import push_hub_folder
from longalign_hf.longbench_chat import CITATION, detect_language, few_shot_slots

logger = logging.getLogger(__name__)

SOURCE_URL = "https://raw.githubusercontent.com/THUDM/LongAlign/main/LongBench_Chat/"
TEST_CASES, FEW_SHOTS, JUDGE_TEMPLATE = "test_cases.json", "few_shots.json", "prompt_fs.txt"
SOURCE_FILES = (TEST_CASES, FEW_SHOTS, JUDGE_TEMPLATE)
# Git blob id of the published test_cases.json (`git hash-object`), to check a download or a local copy against.
TEST_CASES_GIT_BLOB = "8afc5426134b8692b16fcf61c3f097db0025d6f4"
CONFIG_NAMES = ("all", "en", "zh")

_DESCRIPTION = (
    "LongBench-Chat: 50 real-world long-context queries (10k-100k tokens; English and Chinese) with reference "
    "answers and scored example answers, for judging long-context instruction following with an LLM judge "
    "(LongAlign, Bai et al., 2024)."
)
_HOMEPAGE = "https://github.com/THUDM/LongAlign/tree/main/LongBench_Chat"

FEATURES = datasets.Features(
    {
        "idx": datasets.Value("int32"),
        "query": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "few_shots": datasets.List({"answer": datasets.Value("string"), "score": datasets.Value("int32")}),
        "language": datasets.Value("string"),
        "length": datasets.Value("int32"),
        "judge_template": datasets.Value("string"),
    }
)


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file with these bytes (`git hash-object`): sha1 of `b"blob <size>\\0" + data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: LongBench-Chat source file not found. Pass the folder that holds {', '.join(SOURCE_FILES)} "
            f"(from {SOURCE_URL}) as `--source` / `data_dir`, or leave it out to download them."
        ) from None


def _read_json(path: str) -> Any:
    try:
        return json.loads(_read_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc}). Download the file again from {SOURCE_URL}.") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            f"Download the file again from {SOURCE_URL}."
        ) from None


def _check_case(path: str, position: int, case: Any, seen: set[int]) -> None:
    where = f"{path}: case {position}"
    if not isinstance(case, dict):
        raise ValueError(f"{where} is a {type(case).__name__}, expected an object with idx, query, answer, prompt.")
    idx = case.get("idx")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 1:
        raise ValueError(f"{where} has idx {idx!r}; idx must be an integer from 1 (it selects few_shots[idx - 1]).")
    where = f"{path}: case idx {idx}"
    if idx in seen:
        raise ValueError(f"{where} appears twice; every case needs its own idx.")
    seen.add(idx)
    for key in ("query", "answer", "prompt"):
        if not isinstance(case.get(key), str) or not case[key].strip():
            raise ValueError(f"{where}: `{key}` is {case.get(key)!r}, expected a non-empty string.")


def _check_few_shots(path: str, idx: int, shots: Any, slots: int, template_path: str) -> None:
    where = f"{path}: list {idx - 1} (for case idx {idx})"
    if not isinstance(shots, list) or len(shots) != slots:
        found = f"{len(shots)} entries" if isinstance(shots, list) else f"a {type(shots).__name__}"
        raise ValueError(f"{where} has {found}, but the judge template {template_path} takes {slots} examples.")
    for number, shot in enumerate(shots):
        if not isinstance(shot, dict) or not isinstance(shot.get("answer"), str):
            raise ValueError(f"{where}, example {number}: expected an object with a string `answer`, got {shot!r}.")
        score = shot.get("score")
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 10:
            raise ValueError(f"{where}, example {number}: `score` is {score!r}, expected an integer from 1 to 10.")


def _read_source(paths: dict[str, str]) -> list[dict[str, Any]]:
    """Read and check the three source files; one record (see the module docstring) per case, in file order."""
    template_path = paths[JUDGE_TEMPLATE]
    try:
        template = _read_bytes(template_path).decode("utf-8")
        slots = few_shot_slots(template)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{template_path}: not a LongBench-Chat judge prompt template: {exc}") from None

    cases_path, shots_path = paths[TEST_CASES], paths[FEW_SHOTS]
    cases = _read_json(cases_path)
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{cases_path}: expected a non-empty JSON list of cases, got {type(cases).__name__}.")
    few_shots = _read_json(shots_path)
    if not isinstance(few_shots, list):
        raise ValueError(f"{shots_path}: expected a JSON list with one list of examples per case.")
    seen: set[int] = set()
    for position, case in enumerate(cases):
        _check_case(cases_path, position, case, seen)
        if case["idx"] > len(few_shots):
            raise ValueError(
                f"{cases_path}: case idx {case['idx']} has no few-shot list: {shots_path} has {len(few_shots)} "
                f"lists (list i belongs to case idx i + 1). Use the two files from the same LongBench-Chat release."
            )
        _check_few_shots(shots_path, case["idx"], few_shots[case["idx"] - 1], slots, template_path)
    if len(few_shots) != len(cases):
        raise ValueError(
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


@dataclass
class LongBenchChatConfig(datasets.BuilderConfig):
    """Config of `LongBenchChatBuilder`.

    Args:
        language (`str`, *optional*, defaults to `None`):
            Keep only the cases in this language (`"en"` or `"zh"`); `None` keeps them all.
    """

    language: str | None = None


class LongBenchChatBuilder(datasets.GeneratorBasedBuilder):
    """LongBench-Chat from its published source files: configs `all` (default), `en` and `zh`, one `test` split.

    With `data_dir`, the files are read from that folder (a local copy of THUDM/LongAlign `LongBench_Chat/`);
    without it they are downloaded from `SOURCE_URL` and the test cases are checked against the published git
    blob id. Missing, malformed or misaligned files raise an error naming the file, the case and the problem.
    """

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = LongBenchChatConfig
    BUILDER_CONFIGS = [
        LongBenchChatConfig(name="all", version=VERSION, description="All 50 cases."),
        LongBenchChatConfig(name="en", version=VERSION, language="en", description="The English cases."),
        LongBenchChatConfig(name="zh", version=VERSION, language="zh", description="The Chinese cases."),
    ]
    DEFAULT_CONFIG_NAME = "all"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=FEATURES,
            homepage=_HOMEPAGE,
            license="apache-2.0",
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        if self.config.data_dir:
            paths = {name: str(Path(self.config.data_dir) / name) for name in SOURCE_FILES}
        else:
            paths = dl_manager.download({name: SOURCE_URL + name for name in SOURCE_FILES})
        blob = git_blob_sha1(_read_bytes(paths[TEST_CASES]))
        if blob != TEST_CASES_GIT_BLOB:
            message = (
                f"{paths[TEST_CASES]} is git blob {blob}, not the published LongBench-Chat test cases "
                f"({TEST_CASES_GIT_BLOB}): scores on it are not comparable with published ones."
            )
            if not self.config.data_dir:
                raise ValueError(
                    f"{message} The file at {SOURCE_URL} changed; download the release you want and pass its "
                    "folder as `data_dir` / `--source`."
                )
            logger.warning(message)
        _read_source(paths)  # fail here, with the file and case named, rather than inside the Arrow writer
        return [datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"paths": paths})]

    def _generate_examples(self, paths: dict[str, str]):
        for record in _read_source(paths):
            if self.config.language in (None, record["language"]):
                yield record["idx"], record


def _dataset_card(card_data: DatasetCardData, counts: dict[str, int], repo_id: str | None) -> DatasetCard:
    location = repo_id or "path/to/this/folder"
    rows = "\n".join(f"| `{name}` | {counts[name]} |" for name in CONFIG_NAMES)
    body = f"""
# LongBench-Chat

{_DESCRIPTION}

Each case has a long `prompt` (a document followed by the question), the short `query`, a reference `answer`, and
`few_shots`: scored example answers that the judge sees with their ratings. A judge LLM rates a model's answer 1-10
from the query, the reference and the examples (never the document), with the prompt template in `judge_template`
(the benchmark's `prompt_fs.txt`, repeated in every row).

| config | cases |
|--------|-------|
{rows}

```python
from datasets import load_dataset

dataset = load_dataset("{location}", "en", split="test")
```

## Fields

- `idx` (int32): the case number in the source (1-based).
- `query` (string): the question, the last paragraph of `prompt`.
- `prompt` (string): document + question, as the model sees it.
- `answer` (string): the reference answer.
- `few_shots` (list of `{{answer: string, score: int32}}`): scored example answers for the judge.
- `language` (string): `en` or `zh`, derived from the share of CJK characters in the query (the source has no
  language field).
- `length` (int32): characters in `prompt`; token counts depend on the model's tokenizer.
- `judge_template` (string): the judge prompt template, with positional `{{}}` slots for the question, the reference,
  (answer, score) per example, and the answer to rate.

## Scoring

`longalign eval longbench-chat --model MODEL --dataset {location}` (from longalign-hf) generates answers through the model's chat template, truncating
prompts over the window in the middle, and judges them twice with shuffled examples, as the paper does; the
`evaluate` metric `longalign_hf.metrics.LONGBENCH_CHAT` scores predictions you already have.

## Source and license

Built with `longalign data build longbench-chat` from the files published in
[THUDM/LongAlign `LongBench_Chat/`]({_HOMEPAGE}) ({", ".join(SOURCE_FILES)}; the published `{TEST_CASES}` is git
blob `{TEST_CASES_GIT_BLOB}`), released under the Apache License 2.0. The data are THUDM's; only the layout is ours.

## Citation

```bibtex
{CITATION.strip()}
```
"""
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def write_hub_folder(out_dir: str | Path, source_dir: str | Path | None = None, repo_id: str | None = None) -> Path:
    """Build every config into a folder that `datasets.load_dataset(out_dir, config)` and the Hub can read.

    The folder holds `<config>/test-00000-of-00001.parquet` for each config and a `README.md` dataset card whose
    YAML header lists the `configs:` (data files), features, license and citation.

    Args:
        out_dir: the folder to write (created; earlier shards of these configs are replaced).
        source_dir: a folder with the source files; `None` downloads them from `SOURCE_URL`.
        repo_id: the Hub dataset id the folder will be pushed to, used in the card's examples.
    """
    out_dir = Path(out_dir)
    infos, counts = DatasetInfosDict(), {}
    with tempfile.TemporaryDirectory() as cache_dir:  # one cache: the source is downloaded once for all configs
        for name in CONFIG_NAMES:
            builder = LongBenchChatBuilder(
                config_name=name, data_dir=str(source_dir) if source_dir else None, cache_dir=cache_dir
            )
            builder.download_and_prepare()
            dataset = builder.as_dataset(split="test")
            config_dir = out_dir / name
            shutil.rmtree(config_dir, ignore_errors=True)
            config_dir.mkdir(parents=True)
            dataset.to_parquet(str(config_dir / "test-00000-of-00001.parquet"))
            infos[name], counts[name] = builder.info, len(dataset)
            logger.info("LongBench-Chat config %r: %d cases -> %s", name, len(dataset), config_dir)

    card_data = DatasetCardData(
        pretty_name="LongBench-Chat",
        license="apache-2.0",
        language=["en", "zh"],
        task_categories=["text-generation"],
        tags=["long-context", "llm-as-a-judge"],
        size_categories=["n<1K"],
    )
    card_data["configs"] = [
        {
            "config_name": name,
            **({"default": True} if name == "all" else {}),
            "data_files": [{"split": "test", "path": f"{name}/test-*.parquet"}],
        }
        for name in CONFIG_NAMES
    ]
    infos.to_dataset_card_data(card_data)
    _dataset_card(card_data, counts, repo_id).save(out_dir / "README.md")
    return out_dir


def _main(args: argparse.Namespace) -> int:
    out_dir = write_hub_folder(args.out, source_dir=args.source, repo_id=args.push_to_hub)
    logger.info("Wrote %s; load it with datasets.load_dataset(%r, 'en')", out_dir, str(out_dir))
    if args.push_to_hub:
        url = push_hub_folder(
            out_dir, args.push_to_hub, "Build LongBench-Chat with `longalign data build longbench-chat`", args.private
        )
        logger.info("Pushed to %s; load it with datasets.load_dataset(%r, 'en')", url, args.push_to_hub)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign data build longbench-chat`."""
    from longalign_hf.data import build_subparsers  # here, not at the top: longalign_hf.data imports this module

    parser = build_subparsers(subparsers).add_parser(
        "longbench-chat",
        help="LongBench-Chat: source files -> Hub-ready parquet folder (configs all, en, zh)",
        description=(
            "Read LongBench-Chat's test_cases.json, few_shots.json and prompt_fs.txt, check them, and write a "
            "folder of parquet shards with a dataset card that datasets.load_dataset(OUT, CONFIG) reads offline; "
            "optionally push it to the Hub."
        ),
    )
    parser.add_argument(
        "--source",
        metavar="DIR",
        help=f"folder with {', '.join(SOURCE_FILES)} (a copy of THUDM/LongAlign LongBench_Chat/); "
        f"default: download them from {SOURCE_URL}",
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="folder to write the Hub-ready dataset to")
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="also upload the folder to this Hub dataset, with your token (HF_TOKEN or `hf auth login`)",
    )
    parser.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    parser.set_defaults(func=_main)
