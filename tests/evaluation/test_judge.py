"""ChatClient against a real OpenAI-compatible server on 127.0.0.1: retries, concurrency, cache, usage, keys."""

import json
import logging
import time

import pytest
from loopback_server import LoopbackServer, Reply

from longalign_hf.errors import UserInputError
from longalign_hf.llm_client import ChatClient, total_usage


def _conversations(n):
    return [[{"role": "user", "content": f"question {i}"}] for i in range(n)]


def _client(server, **kwargs):
    options = {"base_url": server.base_url, "backoff": 0.001, "max_retries": 3, **kwargs}
    return ChatClient("loopback-judge", **options)


def test_replies_come_back_in_input_order_with_usage():
    with LoopbackServer(lambda request: f"answer to {request.user_content} [[5]]") as server:
        results = _client(server).complete(_conversations(5))
    assert [result.text for result in results] == [f"answer to question {i} [[5]]" for i in range(5)]
    # The loopback server counts words: 2 prompt tokens ("question i"), 5 completion tokens.
    assert all(result.usage == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7} for result in results)
    assert all(result.error is None and not result.cached and result.requests == 1 for result in results)
    assert total_usage(results) == {
        "prompt_tokens": 10,
        "completion_tokens": 25,
        "total_tokens": 35,
        "requests": 5,
        "cached": 0,
        "failed": 0,
    }
    body = server.requests[0].body
    assert body["model"] == "loopback-judge" and body["temperature"] == 0.0
    assert "max_tokens" not in body and "seed" not in body


def test_429_and_500_are_retried_until_success():
    def responder(request):
        return {0: Reply(status=429), 1: Reply(status=500)}.get(request.attempt, "fine")

    with LoopbackServer(responder) as server:
        results = _client(server).complete(_conversations(4))
    assert [result.text for result in results] == ["fine"] * 4
    assert [result.requests for result in results] == [3] * 4
    assert len(server.requests) == 12


def test_retry_after_header_is_honoured():
    def responder(request):
        return Reply(status=429, headers={"retry-after": "0.3"}) if request.attempt == 0 else "fine"

    with LoopbackServer(responder) as server:
        start = time.perf_counter()
        results = _client(server).complete(_conversations(1))
        elapsed = time.perf_counter() - start
    assert results[0].text == "fine"
    assert elapsed >= 0.3  # the exponential backoff alone would wait 1 ms


def test_client_errors_are_not_retried():
    with LoopbackServer(lambda request: Reply(status=400)) as server:
        results = _client(server).complete(_conversations(2))
    assert len(server.requests) == 2
    assert all(result.text is None and "HTTP 400" in result.error and result.requests == 1 for result in results)
    assert total_usage(results)["failed"] == 2


def test_slow_reply_times_out_and_is_retried():
    def responder(request):
        return Reply(content="late", delay=1.0) if request.attempt == 0 else "in time"

    with LoopbackServer(responder) as server:
        results = _client(server, timeout=0.2).complete(_conversations(1))
    assert results[0].text == "in time" and results[0].requests == 2


@pytest.mark.parametrize(
    "reply",
    [Reply(raw_body="this is not JSON"), Reply(content=None), Reply(raw_body='{"id": "x", "choices": []}')],
    ids=["not-json", "null-content", "no-choices"],
)
def test_malformed_replies_are_retried_then_reported(reply):
    with LoopbackServer(lambda request: reply if request.attempt < 5 else "finally") as server:
        failed = _client(server, max_retries=2).complete(_conversations(1))[0]
        assert len(server.requests) == 3
        recovered = _client(server, max_retries=5).complete(_conversations(1))[0]
    assert failed.text is None and "malformed reply" in failed.error and "3 attempts" in failed.error
    assert recovered.text == "finally" and recovered.error is None


def test_invalid_replies_are_asked_again_and_never_cached(tmp_path):
    def responder(request):
        return "no rating here" if request.attempt < 2 else "Rating: [[8]]"

    with LoopbackServer(responder) as server:
        valid = lambda text: "[[" in text  # noqa: E731
        gave_up = _client(server, max_retries=1, cache_dir=tmp_path).complete(_conversations(1), validate=valid)[0]
        assert gave_up.error.startswith("invalid reply") and gave_up.text == "no rating here"
        assert not list(tmp_path.rglob("*.json"))
        # A rerun does not take the bad reply from the cache: it asks again and gets the rating.
        result = _client(server, max_retries=1, cache_dir=tmp_path).complete(_conversations(1), validate=valid)[0]
    assert result.text == "Rating: [[8]]" and result.requests == 1
    assert len(server.requests) == 3
    # The usage of every request is counted, the rejected ones included (they were paid for).
    assert gave_up.usage["completion_tokens"] == 6


def test_concurrency_is_parallel_and_bounded():
    with LoopbackServer(lambda request: Reply(content="ok", delay=0.2)) as server:
        _client(server).complete(_conversations(1))  # not timed: the first request pays for the client's set-up
        start = time.perf_counter()
        _client(server, max_concurrency=4).complete(_conversations(12))
        elapsed = time.perf_counter() - start
    assert server.max_in_flight == 4
    assert elapsed < 12 * 0.2 / 2  # sequential would take 2.4 s; 3 waves of 4 take ~0.6 s


def test_cache_makes_a_rerun_free(tmp_path):
    with LoopbackServer(lambda request: f"reply to {request.user_content}") as server:
        first = _client(server, cache_dir=tmp_path).complete(_conversations(3))
        assert len(server.requests) == 3
        second = _client(server, cache_dir=tmp_path).complete(_conversations(3))
        assert len(server.requests) == 3  # nothing asked again
        assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)
        assert total_usage(second) == {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "requests": 0,
            "cached": 3,
            "failed": 0,
        }
        # The key covers the model and the sampling options: another temperature is another call.
        _client(server, cache_dir=tmp_path, temperature=0.7).complete(_conversations(1))
        ChatClient("another-judge", base_url=server.base_url, cache_dir=tmp_path).complete(_conversations(1))
        assert len(server.requests) == 5
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_unreadable_cache_entry_is_asked_again(tmp_path):
    with LoopbackServer(lambda request: "fresh") as server:
        _client(server, cache_dir=tmp_path).complete(_conversations(1))
        [entry] = tmp_path.rglob("*.json")
        entry.write_text('{"text": "half a fi', encoding="utf-8")  # as if a disk filled up mid-write
        result = _client(server, cache_dir=tmp_path).complete(_conversations(1))[0]
    assert result.text == "fresh" and not result.cached
    assert json.loads(entry.read_text(encoding="utf-8"))["text"] == "fresh"


def test_on_result_sees_every_call():
    seen = {}
    with LoopbackServer(lambda request: request.user_content.upper()) as server:
        _client(server).complete(_conversations(3), on_result=lambda index, result: seen.update({index: result.text}))
    assert seen == {0: "QUESTION 0", 1: "QUESTION 1", 2: "QUESTION 2"}


def test_request_options_are_sent(tmp_path):
    with LoopbackServer(lambda request: "ok") as server:
        _client(server, temperature=0.5, max_tokens=7, seed=3).complete(_conversations(1))
    body = server.requests[0].body
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.5, 7, 3)


def test_api_key_is_sent_but_never_written(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with LoopbackServer(lambda request: "ok") as server:
        _client(server, cache_dir=tmp_path).complete(_conversations(1))
        assert server.requests[-1].headers["authorization"] == "Bearer EMPTY"  # a local server needs no key
        monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-from-env")
        client = _client(server, cache_dir=tmp_path)
        client.complete([[{"role": "user", "content": "other"}]])
        assert server.requests[-1].headers["authorization"] == "Bearer sk-secret-from-env"
    assert "sk-secret" not in repr(client)
    assert all("sk-secret" not in path.read_text() for path in tmp_path.rglob("*.json"))


def test_openai_without_a_key_fails_early(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserInputError, match="OPENAI_API_KEY"):
        ChatClient("gpt-4o-2024-05-13")


def test_each_failed_call_is_a_warning_with_its_reason(caplog):
    def responder(request):
        return "fine [[5]]" if request.user_content == "question 1" else "no score here"

    with LoopbackServer(responder) as server, caplog.at_level(logging.INFO, logger="longalign_hf.llm_client"):
        results = _client(server, max_retries=1).complete(
            _conversations(3), validate=lambda text: "[[" in text, desc="rating", invalid_reason="no [[n]] in it"
        )
    assert [result.error for result in results] == [
        "invalid reply: no [[n]] in it (gave up after 2 attempts)",
        None,
        "invalid reply: no [[n]] in it (gave up after 2 attempts)",
    ]
    warnings = sorted(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert warnings == [
        "rating with loopback-judge: 3 calls, 0 from cache, 2 failed; 5 requests, 10 prompt + 14 completion tokens",
        "rating with loopback-judge: call 1 of 3 failed: invalid reply: no [[n]] in it (gave up after 2 attempts)",
        "rating with loopback-judge: call 3 of 3 failed: invalid reply: no [[n]] in it (gave up after 2 attempts)",
    ]


def test_a_batch_without_failures_logs_no_warning(caplog):
    with (
        LoopbackServer(lambda request: "ok") as server,
        caplog.at_level(logging.INFO, logger="longalign_hf.llm_client"),
    ):
        _client(server).complete(_conversations(2))
    assert [record.levelno for record in caplog.records] == [logging.INFO]


@pytest.mark.parametrize(
    ("option", "message"),
    [({"timeout": 0}, "`timeout` must be above 0"), ({"timeout": -1.0}, "`timeout` must be above 0"),
     ({"temperature": -0.5}, "`temperature` must be 0 or more")],
)  # fmt: skip
def test_a_timeout_every_call_would_fail_is_refused(option, message):
    with pytest.raises(ValueError, match=message):
        ChatClient("loopback-judge", base_url="http://127.0.0.1:9/v1", **option)


def test_a_cache_that_cannot_be_written_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("x")
    cache = tmp_path / "a-file" / "cache"  # below a file: no folder can be made there
    with LoopbackServer(lambda request: "a reply") as server:
        with pytest.raises(UserInputError, match=r"^Cannot write the reply cache \S+cache \(Not a directory\): pass"):
            _client(server, cache_dir=cache).complete(_conversations(1))
