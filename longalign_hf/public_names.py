"""How a model card names a model or a data source: a Hub id as it is, anything local by its folder or file name only.

A card travels (`--push_to_hub` uploads it): a local path in it would publish the user's folder layout
(`/home/<user>/...`). Stdlib only: the evaluation commands import it before they know what will run.
"""

from __future__ import annotations

import os
import re

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DATA_FILES = (".json", ".jsonl", ".parquet", ".csv", ".txt")
_SEPARATORS = re.compile(r"[\\/]+")


def hub_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub repository id (`org/name`, not a local path or a data file), else `None`.

    >>> hub_id("THUDM/LongAlign-10k"), hub_id("data/missing.jsonl"), hub_id("embedded data")
    ('THUDM/LongAlign-10k', None, None)
    """
    if not name or not _HUB_ID.fullmatch(name) or name.endswith(_DATA_FILES) or os.path.exists(name):
        return None
    return name


def public_name(source: str) -> str:
    """What a card calls a model or data source: its Hub id, or the name of its local folder or file, or (a name
    that is neither, such as a served model's name or a description) `source` itself.

    >>> public_name("THUDM/LongAlign-10k"), public_name("/home/me/runs/base_model/"), public_name("~/data/chat.jsonl")
    ('THUDM/LongAlign-10k', 'base_model', 'chat.jsonl')
    >>> public_name("gpt-4o-2024-05-13")
    'gpt-4o-2024-05-13'
    """
    if not source or hub_id(source):
        return source
    local = os.path.expanduser(source)
    if os.path.exists(local):
        return os.path.basename(os.path.abspath(local)) or source
    if _SEPARATORS.search(source) or source.startswith("~"):
        return _SEPARATORS.split(source.rstrip("\\/"))[-1] or source
    return source
