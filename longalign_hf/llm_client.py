"""An OpenAI-compatible chat-completions client for LLM judges and generators: concurrency, retries, disk cache, usage.

It talks to any server that speaks `/v1/chat/completions` through the `openai` client: OpenAI itself, or a local
`vllm serve` / llama.cpp server (`base_url="http://localhost:8000/v1"`). Calls run in a thread pool bounded by
`max_concurrency`; transient failures (connection errors, timeouts, HTTP 408/409/429/5xx) are retried with
exponential backoff; a caller-supplied `validate` marks a reply unusable (e.g. no rating in it) so it is asked again;
good replies are cached on disk so a rerun pays nothing twice. A call that still fails after its retries is logged as a
WARNING and returned with its `error`. The API key is sent to the server and nowhere else: it is never logged, cached
or written.

`openai` and `tqdm` are imported when first used, so importing this module stays light (the `longalign` command
does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign_hf.errors import UserInputError

logger = logging.getLogger(__name__)

Messages = list[dict[str, Any]]

_RETRYABLE_STATUS = {408, 409, 429}
_MAX_BACKOFF = 60.0
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass
class ChatResult:
    """The outcome of one chat completion.

    Args:
        text (`str` or `None`): the reply's content; on failure, the last reply received (if any).
        usage (`dict`): tokens of every request made for this call (`prompt_tokens`, `completion_tokens`,
            `total_tokens`); for a cached reply, what it cost when it was first made.
        cached (`bool`): the reply came from the disk cache and cost nothing now.
        error (`str` or `None`): why the call failed after its retries; `None` on success.
        requests (`int`): requests sent to the server for this call (0 for a cache hit).
    """

    text: str | None
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_USAGE_KEYS, 0))
    cached: bool = False
    error: str | None = None
    requests: int = 0


def total_usage(results: Sequence[ChatResult]) -> dict[str, int]:
    """What a batch of calls cost now: tokens and requests of the calls not served from the cache, plus their counts."""
    paid = [result for result in results if not result.cached]
    usage = {key: sum(result.usage.get(key, 0) for result in paid) for key in _USAGE_KEYS}
    usage["requests"] = sum(result.requests for result in paid)
    usage["cached"] = len(results) - len(paid)
    usage["failed"] = sum(result.error is not None for result in results)
    return usage


class ChatClient:
    """A concurrent, retrying, caching client for an OpenAI-compatible chat-completions endpoint.

    One client serves every LLM call of the package: the LongBench-Chat and needle judges, answers from a served model
    (`longalign eval ... --base-url`), and Self-Instruct's questions and answers (`longalign data generate`).

    Args:
        model (`str`): model name sent to the server (recorded with every score), e.g. `"gpt-4o-2024-05-13"`.
        base_url (`str`, *optional*): server URL, e.g. `"http://localhost:8000/v1"`; `None` means OpenAI.
        api_key (`str`, *optional*): defaults to the `OPENAI_API_KEY` environment variable; with a `base_url` and no
            key, `"EMPTY"` is sent (local servers ignore it).
        temperature (`float`, *optional*, defaults to `0.0`): sampling temperature (the paper judged at 0).
        max_concurrency (`int`, *optional*, defaults to `8`): requests in flight at once.
        timeout (`float`, *optional*, defaults to `120.0`): seconds to wait for one reply (the paper's script: 120).
        max_retries (`int`, *optional*, defaults to `5`): extra attempts per call after a transient error or an
            invalid reply (the paper's script tried 5 times).
        backoff (`float`, *optional*, defaults to `1.0`): seconds before the first retry after a transient error,
            doubled at each retry (capped at 60 s); a larger `retry-after` from the server wins.
        cache_dir (`str` or `Path`, *optional*): folder of cached replies, keyed by model, messages and sampling
            options (not by `base_url`); `None` disables the cache.
        max_tokens (`int`, *optional*): cap on reply tokens; `None` leaves it to the server.
        seed (`int`, *optional*): sampling seed sent to servers that honour it (vLLM, OpenAI best-effort).

    Example:

    ```python
    judge = ChatClient("gpt-4o-2024-05-13", cache_dir="judge_cache")
    results = judge.complete([[{"role": "user", "content": "Rate this: ... [[n]]"}]], validate=lambda t: "[[" in t)
    print(results[0].text, results[0].usage)
    ```
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ):
        if max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be at least 1, got {max_concurrency}.")
        if max_retries < 0:
            raise ValueError(f"`max_retries` must be 0 or more, got {max_retries}.")
        if not timeout > 0:
            raise ValueError(f"`timeout` must be above 0 seconds, got {timeout}.")
        if temperature < 0:
            raise ValueError(f"`temperature` must be 0 or more, got {temperature}.")
        import openai

        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if api_key is None:
            if base_url is None:
                raise UserInputError(
                    "No API key for the OpenAI API: set the OPENAI_API_KEY environment variable or pass `api_key`; "
                    "for a local server (vLLM, llama.cpp) pass its `base_url` instead."
                )
            api_key = "EMPTY"
        self.model = model
        self.base_url = base_url
        self.temperature = temperature
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_tokens = max_tokens
        self.seed = seed
        # Retries are ours (counted, with backoff and reply validation), so the openai client's own are off.
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)

    def __repr__(self) -> str:
        return f"ChatClient(model={self.model!r}, base_url={self.base_url!r}, temperature={self.temperature})"

    def complete(
        self,
        messages_list: Sequence[Messages],
        validate: Callable[[str], bool] | None = None,
        desc: str = "chat completions",
        on_result: Callable[[int, ChatResult], None] | None = None,
        invalid_reason: str = "rejected by the caller's check",
    ) -> list[ChatResult]:
        """Answer every conversation in `messages_list`, `max_concurrency` at a time, in input order.

        Args:
            messages_list: one list of `{"role", "content"}` messages per call.
            validate: returns `False` for a reply that cannot be used; it is then asked again (bypassing the cache)
                up to `max_retries` times and finally reported with `error` set. Cached replies are re-validated.
            desc: label of the progress bar and of the log lines.
            on_result: called as `on_result(index, result)` in the calling thread as each call finishes, e.g. to
                save results as they come.
            invalid_reason: what is wrong with a reply `validate` rejects, in the `error` of a call that gave up,
                e.g. `"no rating [[n]] in it"`.

        Each call that fails after its retries is logged as a WARNING as it finishes, and so is the final tally
        when any failed.
        """
        from tqdm.auto import tqdm

        results: list[ChatResult | None] = [None] * len(messages_list)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {
                pool.submit(self._complete_one, messages, validate, invalid_reason): i
                for i, messages in enumerate(messages_list)
            }
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc=desc):
                    index = futures[future]
                    results[index] = future.result()
                    if results[index].error is not None:
                        logger.warning(
                            "%s with %s: call %d of %d failed: %s",
                            desc,
                            self.model,
                            index + 1,
                            len(futures),
                            results[index].error,
                        )
                    if on_result is not None:
                        on_result(index, results[index])
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        usage = total_usage(results)
        logger.log(
            logging.WARNING if usage["failed"] else logging.INFO,
            "%s with %s: %d calls, %d from cache, %d failed; %d requests, %d prompt + %d completion tokens",
            desc,
            self.model,
            len(results),
            usage["cached"],
            usage["failed"],
            usage["requests"],
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        return results

    def _request_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"model": self.model, "temperature": self.temperature}
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        if self.seed is not None:
            options["seed"] = self.seed
        return options

    def _complete_one(
        self, messages: Messages, validate: Callable[[str], bool] | None, invalid_reason: str
    ) -> ChatResult:
        import openai

        options = self._request_options()
        key = hashlib.sha256(json.dumps({**options, "messages": messages}, sort_keys=True).encode("utf-8")).hexdigest()
        cached = self._read_cache(key)
        if cached is not None and (validate is None or validate(cached["text"])):
            return ChatResult(text=cached["text"], usage=cached["usage"], cached=True)

        usage = dict.fromkeys(_USAGE_KEYS, 0)
        text, error, wait = None, None, 0.0
        for attempt in range(self.max_retries + 1):
            time.sleep(wait)
            wait = 0.0
            try:
                response = self._client.chat.completions.create(messages=messages, **options)
            except openai.APIStatusError as exc:
                error = f"HTTP {exc.status_code} from {self._client.base_url}: {exc.message}"
                if exc.status_code not in _RETRYABLE_STATUS and exc.status_code < 500:
                    return ChatResult(text=None, usage=usage, error=error, requests=attempt + 1)
                wait = self._backoff_delay(attempt, exc.response.headers.get("retry-after"))
                continue
            except openai.APIConnectionError as exc:  # includes timeouts
                error = f"{type(exc).__name__} from {self._client.base_url}: {exc}"
                wait = self._backoff_delay(attempt, None)
                continue
            except (openai.APIResponseValidationError, ValueError) as exc:  # a body that is not chat-completion JSON
                error = f"malformed reply from {self._client.base_url}: {exc}"
                wait = self._backoff_delay(attempt, None)
                continue
            for key_name in _USAGE_KEYS:
                usage[key_name] += getattr(response.usage, key_name, 0) or 0
            reply = response.choices[0].message.content if response.choices else None
            if reply is None:
                error = "malformed reply: no message content"
                continue
            text = reply
            if validate is not None and not validate(reply):
                error = f"invalid reply: {invalid_reason}"
                continue
            self._write_cache(key, {"model": self.model, "text": reply, "usage": usage})
            return ChatResult(text=reply, usage=usage, requests=attempt + 1)
        return ChatResult(
            text=text,
            usage=usage,
            error=f"{error} (gave up after {self.max_retries + 1} attempts)",
            requests=self.max_retries + 1,
        )

    def _backoff_delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * 2**attempt
        if retry_after is not None:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:  # an HTTP date: not worth parsing, the exponential delay applies
                pass
        return min(delay, _MAX_BACKOFF)

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, key: str) -> dict[str, Any] | None:
        if self.cache_dir is None:
            return None
        path = self._cache_path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            return {"text": str(entry["text"]), "usage": dict(entry["usage"])}
        except (FileNotFoundError, NotADirectoryError):  # not cached yet (a cache below a file fails at the write)
            return None
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("Ignoring the unreadable reply cache entry %s (%s); the call is made again.", path, exc)
            return None

    def _write_cache(self, key: str, entry: dict[str, Any]) -> None:
        if self.cache_dir is None:
            return
        path = self._cache_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a crash leaves either the old state or the whole entry, never half a file.
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False) as f:
                json.dump(entry, f, ensure_ascii=False)
            os.replace(f.name, path)
        except OSError as error:
            raise UserInputError(
                f"Cannot write the reply cache {self.cache_dir} ({error.strerror or type(error).__name__}): pass a "
                "cache folder you can write to (--judge-cache-dir; --cache-dir of `longalign data generate`)"
            ) from None
