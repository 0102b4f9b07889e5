"""The LongBench-Chat cases: the `test` split of a data set built by `longalign data build longbench-chat` (a local
folder or a Hub id), loaded and checked (`load_cases`), with errors that say what is wrong and how to build one.

`datasets` is imported by the functions that use it, so the `longalign` command can import this module at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from longalign_hf import command_args
from longalign_hf.errors import UserInputError

if TYPE_CHECKING:
    import datasets

DEFAULT_DATASET = "longalign-hf/LongBench-Chat"
_COLUMNS = {"idx", "query", "prompt", "answer", "few_shots", "language", "length", "judge_template"}
_HOW_TO_BUILD = (
    "build one with `longalign data build longbench-chat --out DIR` and pass --dataset DIR (or the Hub id it was "
    "pushed to)"
)
_LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}


def load_cases(dataset: str = DEFAULT_DATASET, config: str = "all") -> datasets.Dataset:
    """The `test` split of a built LongBench-Chat data set: a local folder or a Hub id, checked.

    Raises `UserInputError` naming what is wrong and how to build one: a folder that does not exist or holds no data,
    a data set without the LongBench-Chat configs, split or columns (it says which it has), a Hub id that cannot be
    reached.
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

    local = Path(dataset).expanduser()
    if local.is_file():
        raise UserInputError(
            f"--dataset {dataset} is a file, not a data set folder: {_HOW_TO_BUILD}; that DIR is what --dataset takes"
        )
    if not local.exists() and command_args.looks_like_a_path(dataset):
        raise UserInputError(f"--dataset {dataset}: no such folder; {_HOW_TO_BUILD}")
    source = str(local) if local.exists() else dataset
    try:
        with command_args.quiet_datasets_log():  # its own ERROR lines would come before our one-line reason
            cases = datasets.load_dataset(source, config, split="test")
    except DatasetNotFoundError:
        raise UserInputError(
            f"--dataset {dataset}: no such data set on the Hub, nor a local folder of that name; check the id, or "
            f"{_HOW_TO_BUILD}"
        ) from None
    except ConnectionError as error:
        raise UserInputError(
            f"--dataset {dataset}: not a local folder, and the Hub cannot be reached to load it ({command_args.one_line(error)}); connect to "
            f"the network, or {_HOW_TO_BUILD}"
        ) from None
    except FileNotFoundError as error:  # a folder with no data file in it
        raise UserInputError(
            f"--dataset {dataset} holds no data set ({command_args.one_line(error)}); {_HOW_TO_BUILD}"
        ) from None
    except DatasetGenerationError as error:
        raise UserInputError(
            f"--dataset {dataset}: its data files cannot be read ({command_args.one_line(error.__cause__ or error)}); {_HOW_TO_BUILD}"
        ) from None
    except ValueError as error:  # an unknown config or split; an invalid Hub id
        if not local.exists() and "Repo id" in str(error):
            raise UserInputError(f"--dataset {dataset} is neither a folder nor a Hub id; {_HOW_TO_BUILD}") from None
        if "BuilderConfig" not in str(error) and "split" not in str(error):
            raise
        configs = _config_names(source)
        if "all" in configs and config not in configs:  # a LongBench-Chat set built from a one-language source
            languages = [language for language in ("en", "zh") if language in configs]
            raise UserInputError(
                f"--dataset {dataset} has no {config!r} config (it has: {', '.join(configs)}): the source it was "
                f"built from has no {_LANGUAGE_NAMES.get(config, config)} case. Pass --config "
                f"{' or '.join(['all', *languages])}, or build a set with {config!r} cases from the full benchmark "
                "(`longalign data build longbench-chat --out DIR` without --source downloads it) and pass "
                "--dataset DIR"
            ) from None
        raise UserInputError(
            f"--dataset {dataset} is not a LongBench-Chat data set: {_describe(source)}, but LongBench-Chat has "
            f"configs all, en and zh with a test split; {_HOW_TO_BUILD}"
        ) from None
    missing = sorted(_COLUMNS - set(cases.column_names))
    if missing:
        raise UserInputError(
            f"--dataset {dataset} (config {config}) is not a LongBench-Chat data set: it has columns "
            f"{sorted(cases.column_names)}, LongBench-Chat needs {sorted(_COLUMNS)} (missing {missing}); {_HOW_TO_BUILD}"
        )
    if not len(cases):
        raise UserInputError(f"--dataset {dataset} (config {config}) has no case; {_HOW_TO_BUILD}")
    return cases


def _config_names(source: str) -> list[str]:
    """The configs of a data set, `[]` when they cannot be read."""
    import datasets
    from datasets.exceptions import DatasetsError

    try:
        return list(datasets.get_dataset_config_names(source))
    except (ValueError, OSError, DatasetsError):
        return []


def _describe(source: str) -> str:
    """What a data set holds (configs, splits, columns), to say why it is not the expected one."""
    import datasets
    from datasets.exceptions import DatasetsError

    try:
        configs = datasets.get_dataset_config_names(source)
        streamed = datasets.load_dataset(source, configs[0], streaming=True)
        split = next(iter(streamed))
        columns = streamed[split].column_names
    except (ValueError, OSError, StopIteration, IndexError, DatasetsError):
        return "its configs, splits and columns cannot be read"
    return (
        f"it has configs {configs}; config {configs[0]!r} has splits {sorted(streamed)} and columns "
        f"{sorted(columns) if columns is not None else 'unknown'}"
    )
