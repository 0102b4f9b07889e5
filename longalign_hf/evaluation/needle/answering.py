"""Making the needle answers: the prompts of the cells to answer (`build_prompts`), answered by a local model
(`generate`) or an OpenAI-compatible server (`request`), each record appended to `needle.jsonl` as it comes and
scored by string matching."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from longalign_hf.evaluation import run_folder
from longalign_hf.evaluation.generation import generate_chat_answers, request_chat_answers
from longalign_hf.evaluation.needle.haystack import Haystack
from longalign_hf.evaluation.needle.probes import NeedlePrompt, build_needle_prompt, match_fraction
from longalign_hf.llm_client import ChatClient

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Tokens of haystack beyond the longest prompt, so windows can start at many different sentences (a short prompt has
# few sentences: it takes many tries to find a run with a boundary near the asked depth).
HAYSTACK_MARGIN = 32_768


def record_cell(record: dict[str, Any]) -> tuple[str, int, float]:
    """The (probe, length, depth) cell of a record."""
    return record["probe"], int(record["length"]), float(record["depth"])


def build_prompts(
    tokenizer: PreTrainedTokenizerBase,
    haystack_text: str,
    todo: Sequence[tuple[str, int, float]],
    seed: int,
    num_needles: int,
    key_type: str,
    value_type: str,
) -> dict[int, list[NeedlePrompt]]:
    """The prompts of the `todo` cells, by length (prompts of one length batch with little padding)."""
    haystack = Haystack(haystack_text, tokenizer, max(length for _, length, _ in todo) + HAYSTACK_MARGIN)
    prompts_by_length: dict[int, list[NeedlePrompt]] = {}
    for probe, length, depth in todo:
        prompts_by_length.setdefault(length, []).append(
            build_needle_prompt(tokenizer, haystack, length, depth, probe, seed, num_needles, key_type, value_type)
        )
    return prompts_by_length


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts_by_length: dict[int, list[NeedlePrompt]],
    records: dict[tuple[str, int, float], dict[str, Any]],
    records_path: Path,
    *,
    model_name: str,
    max_new_tokens: int,
    batch_size: int,
    temperature: float,
    seed: int,
) -> None:
    """Answer and score the prompts, one length at a time, appending each record to `records_path` as it comes."""
    logger.info("Model %s (%s, attention: %s)", model_name, model.dtype, model.config._attn_implementation)
    with run_folder.open_for_append(records_path) as f:
        for number, length in enumerate(sorted(prompts_by_length), start=1):
            prompts = prompts_by_length[length]
            save = _saver(f, prompts, records, model_name)
            desc = f"needle {length} tokens ({number}/{len(prompts_by_length)})"
            generate_chat_answers(
                model,
                tokenizer,
                [prompt.prompt for prompt in prompts],
                max_new_tokens=max_new_tokens,
                max_length=None,
                batch_size=batch_size,
                temperature=temperature,
                seed=seed,
                on_answer=save,
                desc=desc,
            )


def request(
    client: ChatClient,
    prompts_by_length: dict[int, list[NeedlePrompt]],
    records: dict[tuple[str, int, float], dict[str, Any]],
    records_path: Path,
    *,
    model_name: str,
) -> None:
    """Ask the server for every prompt at once (its concurrency bounds the requests in flight), appending each record
    to `records_path` as it comes; a prompt the server did not answer gets no record."""
    prompts = [prompt for length in sorted(prompts_by_length) for prompt in prompts_by_length[length]]
    with run_folder.open_for_append(records_path) as f:
        save = _saver(f, prompts, records, model_name)
        request_chat_answers(client, [prompt.prompt for prompt in prompts], on_answer=save, desc="needle (server)")


def _saver(f: TextIO, prompts: Sequence[NeedlePrompt], records: dict, model_name: str) -> Callable[[int, str], None]:
    def save(index: int, answer: str) -> None:
        prompt = prompts[index]
        record = {"model": model_name, **asdict(prompt), "answer": answer}
        record["score"] = match_fraction(answer, prompt.expected)
        del record["prompt"]  # tens of thousands of tokens each; rebuilt exactly from the settings when needed
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        records[record_cell(record)] = record

    return save
