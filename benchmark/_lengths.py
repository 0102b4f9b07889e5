"""Shared by the benchmarks: the long-tailed length mix of LongAlign's training data, and output helpers.

The output helpers print the command line and the machine above a Markdown table, so a run pastes into
BENCHMARKS.md with its provenance.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc


def long_tailed_lengths(
    n_short: int,
    n_long: int,
    seed: int,
    max_length: int = 65536,
    short_median: float = 600.0,
    short_sigma: float = 1.0,
    long_min: int = 8192,
) -> np.ndarray:
    """Token counts shaped like LongAlign's training mix: many short chats plus long documents spread evenly.

    The paper mixes ShareGPT (general chat, mostly a few hundred to a couple of thousand tokens) with LongAlign-10k
    (about 10k samples spread evenly over 8k-64k tokens). Short samples are log-normal with median `short_median`
    and log-space spread `short_sigma` (the defaults put the mean near 1k tokens and 90% under ~2.2k), rounded and
    clipped to [16, `max_length`]; long samples are uniform integers over [`long_min`, `max_length`]. The two are
    shuffled together, so data order carries no length signal.

    Args:
        n_short (`int`): number of short (chat-like) samples.
        n_long (`int`): number of long (document) samples.
        seed (`int`): seed of numpy's `default_rng`; the same arguments give the same lengths.
        max_length (`int`, *optional*, defaults to `65536`): longest allowed sample.
        short_median (`float`, *optional*, defaults to `600.0`): median of the short samples.
        short_sigma (`float`, *optional*, defaults to `1.0`): sigma of the log-normal.
        long_min (`int`, *optional*, defaults to `8192`): shortest long sample.

    Example:
        >>> lengths = long_tailed_lengths(1000, 10, seed=0)
        >>> len(lengths), int(lengths.min()) >= 16, int(lengths.max()) <= 65536
        (1010, True, True)
    """
    rng = np.random.default_rng(seed)
    short = np.rint(rng.lognormal(np.log(short_median), short_sigma, n_short))
    long = rng.integers(long_min, max_length, n_long, endpoint=True)
    lengths = np.concatenate([np.clip(short, 16, max_length).astype(np.int64), long])
    rng.shuffle(lengths)
    return lengths


DATASET_FILE_TYPES = (".parquet", ".jsonl", ".json")


def load_lengths(source: str | os.PathLike, split: str = "train") -> np.ndarray:
    """Token counts from a `.npy` file, a text file with one integer per line, or a tokenized data set.

    A tokenized data set is a `.parquet` / `.jsonl` / `.json` file, a folder (written by `save_to_disk`, or of data
    files) or a Hub id, loaded like the recipe loads data (`longalign_hf.data.sft_data.load_chat_dataset`, split `split`).
    Its `length` column is used when it has one, else the length of every `input_ids` list.
    """
    path = Path(source)
    if path.suffix.lower() == ".npy":
        return np.load(path).astype(np.int64)
    if path.is_file() and path.suffix.lower() not in DATASET_FILE_TYPES:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    from longalign_hf.data.sft_data import load_chat_dataset

    dataset = load_chat_dataset(str(source), split=split)
    if "length" in dataset.column_names:
        return np.asarray(dataset["length"], dtype=np.int64)
    if "input_ids" in dataset.column_names:
        column = dataset.with_format("arrow")[:]["input_ids"]
        return pc.list_value_length(column).to_numpy().astype(np.int64)
    raise ValueError(
        f"{source} has no `length` or `input_ids` column (it has {', '.join(dataset.column_names)}): tokenize it "
        "first (`longalign_hf.data.sft_data.prepare_sft_dataset(dataset, tokenizer, max_length)`, then `save_to_disk`), "
        "or pass token counts as a .npy or a text file with one per line"
    )


def print_header(script: str, argv: list[str]) -> None:
    """Print the command line and the machine, so a pasted table says where it came from."""
    print(f"$ python {script} {' '.join(argv)}".rstrip())
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"numpy {np.__version__}, {sys.implementation.name}"
    )


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    """Print a Markdown table of already formatted cells."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""

    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def free_port() -> int:
    """A free TCP port on this machine, for a launcher's rendezvous."""
    # A fresh rendezvous port per launch: the previous launch's port can linger in TIME_WAIT.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
