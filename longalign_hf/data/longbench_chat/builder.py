"""LongBench-Chat as a `datasets` builder: configs `all` (default), `en` and `zh`, one `test` split.

The source files, their checks and the record are described in `longalign_hf.data.longbench_chat.source`; the
Hub-ready folder (`longalign data build longbench-chat`) is written by `hub_folder`. This module is only the
`datasets` side, kept apart so that the command line does not import `datasets` before it runs a command.

```python
builder = LongBenchChatBuilder(config_name="en", data_dir="path/to/LongBench_Chat")
builder.download_and_prepare()
dataset = builder.as_dataset(split="test")
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets

from longalign_hf.data.longbench_chat.format import CITATION
from longalign_hf.data.longbench_chat.source import (
    DESCRIPTION,
    HOMEPAGE,
    LANGUAGE_NAMES,
    SOURCE_FILES,
    SOURCE_URL,
    TEST_CASES,
    check_release,
    check_source_folder,
    read_source,
)
from longalign_hf.errors import UserInputError

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
    blob id. Missing, malformed or misaligned files raise `UserInputError` naming the file, the case and the problem;
    so does a language config (`en`, `zh`) of a source without a case in that language.
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
            description=DESCRIPTION,
            features=FEATURES,
            homepage=HOMEPAGE,
            license="apache-2.0",
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        if self.config.data_dir:
            check_source_folder(self.config.data_dir)
            paths = {name: str(Path(self.config.data_dir) / name) for name in SOURCE_FILES}
        else:
            try:
                paths = dl_manager.download({name: SOURCE_URL + name for name in SOURCE_FILES})
            except Exception as error:
                reason = next(iter(str(error).strip().splitlines()), "")
                raise UserInputError(
                    f"could not download LongBench-Chat from {SOURCE_URL} ({type(error).__name__}: {reason}); check "
                    f"your network, or download {', '.join(SOURCE_FILES)} yourself and pass their folder as "
                    "`--source` / `data_dir`"
                ) from error
        check_release(paths[TEST_CASES], downloaded=not self.config.data_dir)
        # Read here, to fail with the file and case named rather than inside the Arrow writer.
        languages = {record["language"] for record in read_source(paths)}
        if self.config.language is not None and self.config.language not in languages:
            raise UserInputError(
                f"{paths[TEST_CASES]} has no {LANGUAGE_NAMES[self.config.language]} case, so config "
                f"{self.config.name!r} would be empty; build config 'all' (or "
                f"{', '.join(repr(language) for language in sorted(languages))})"
            )
        return [datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"paths": paths})]

    def _generate_examples(self, paths: dict[str, str]):
        for record in read_source(paths):
            if self.config.language in (None, record["language"]):
                yield record["idx"], record
