"""`longalign data build longbench-chat`: LongBench-Chat as a Hub-ready folder of parquet shards with a dataset card.

The source files and the record are described in `longalign_hf.data.longbench_chat.source`; they are read through
`LongBenchChatBuilder` (`builder`), and the card is written by `card`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from longalign_hf.data.hub import check_out_folder, staged_folder
from longalign_hf.data.longbench_chat.source import CONFIG_NAMES, LANGUAGE_NAMES, check_source_folder

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)


def write_hub_folder(out_dir: str | Path, source_dir: str | Path | None = None, repo_id: str | None = None) -> Path:
    """Build the data set into a folder that `datasets.load_dataset(out_dir, config)` and the Hub can read.

    The folder holds `<config>/test-00000-of-00001.parquet` for each config with at least one case (`all`, and `en`
    / `zh` when the source has cases in that language) and a `README.md` dataset card whose YAML header lists the
    `configs:` (data files), features, license and citation. The source is read and checked once, for `all`; the
    language configs are its rows in that language.

    Args:
        out_dir: the folder to write. It changes only once everything is written, so a failed build leaves it as it
            was (or absent); then this build's configs and card replace an earlier build's, other files are kept.
        source_dir: a folder with the source files; `None` downloads them from `source.SOURCE_URL`.
        repo_id: the Hub dataset id the folder will be pushed to, used in the card's examples.

    Returns:
        The folder.
    """
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    from longalign_hf.data.longbench_chat.builder import LongBenchChatBuilder
    from longalign_hf.data.longbench_chat.card import dataset_card

    out_dir = Path(out_dir)
    if source_dir is not None:
        check_source_folder(source_dir)
    check_out_folder(out_dir)
    infos, counts = DatasetInfosDict(), {}
    with (
        tempfile.TemporaryDirectory() as cache_dir,
        staged_folder(out_dir, owned=(*CONFIG_NAMES, "README.md")) as staging,
    ):
        builder = LongBenchChatBuilder(
            config_name="all", data_dir=str(source_dir) if source_dir else None, cache_dir=cache_dir
        )
        builder.download_and_prepare()
        everything = builder.as_dataset(split="test")
        languages = everything["language"]
        for name in CONFIG_NAMES:
            if name == "all":
                dataset = everything
            else:
                rows = [index for index, language in enumerate(languages) if language == name]
                if not rows:
                    logger.warning(
                        "LongBench-Chat config %r left out: the source has no %s case (datasets.load_dataset(OUT, "
                        "%r) will say the config does not exist).",
                        name,
                        LANGUAGE_NAMES[name],
                        name,
                    )
                    continue
                dataset = everything.select(rows).flatten_indices()
            (staging / name).mkdir()
            dataset.to_parquet(str(staging / name / "test-00000-of-00001.parquet"))
            infos[name] = _config_info(builder.info, name, dataset)
            counts[name] = len(dataset)
            logger.info("LongBench-Chat config %r: %d cases -> %s", name, len(dataset), out_dir / name)

        card_data = DatasetCardData(
            pretty_name="LongBench-Chat",
            license="apache-2.0",
            language=[name for name in LANGUAGE_NAMES if name in counts],
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
            for name in counts
        ]
        infos.to_dataset_card_data(card_data)
        dataset_card(card_data, counts, repo_id).save(staging / "README.md")
    return out_dir


def _config_info(info: datasets.DatasetInfo, name: str, dataset: datasets.Dataset) -> datasets.DatasetInfo:
    """The `all` config's info, for config `name` and its test split `dataset`."""
    import datasets

    info = info.copy()
    info.config_name = name
    info.splits = datasets.SplitDict()
    info.splits.add(datasets.SplitInfo(name="test", num_examples=len(dataset), num_bytes=dataset.data.nbytes))
    info.dataset_size = dataset.data.nbytes
    return info
