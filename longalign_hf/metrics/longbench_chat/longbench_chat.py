"""LongBench-Chat: an LLM judge rates long-context answers 1-10 against a reference and scored examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from longalign_hf.data.longbench_chat.format import CITATION
from longalign_hf.evaluation.longbench_chat.scoring import score_predictions
from longalign_hf.llm_client import ChatClient

_CITATION = CITATION

_DESCRIPTION = """\
LongBench-Chat (LongAlign, Bai et al., 2024) judges answers to 50 real-world long-context queries (10k-100k tokens,
English and Chinese). A judge LLM behind any OpenAI-compatible chat-completions endpoint sees the short question,
the reference answer, three scored example answers (in an order shuffled per run) and the answer, and replies with a
rating "[[n]]" from 1 to 10. The rating is the first number in the last "[[...]]". Each answer is judged `n_runs`
times (the paper: twice) and averaged; a reply with no rating is asked again, then reported as failed and left out
of the mean (never scored 0). Judge calls are cached on disk. The judge sees each answer stripped and, as in the
released script, with its line breaks made spaces: exactly the request `longalign eval longbench-chat` sends for it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the model's answers.
    references (`list` of `str`): the reference answers (dataset column `answer`).
    questions (`list` of `str`): the short questions (dataset column `query`), not the long prompts.
    few_shots (`list` of `list` of `dict`): per case, its scored examples `{"answer": str, "score": int}` (dataset
        column `few_shots`).
    judge_template (`str`): the benchmark's judge prompt template, `prompt_fs.txt` (dataset column
        `judge_template`, the same in every row).
    judge (`dict` or `ChatClient`): the judge, or the keyword arguments of `longalign_hf.llm_client.ChatClient`,
        e.g. `{"model": "gpt-4o-2024-05-13", "cache_dir": "judge_cache"}` or
        `{"model": "Qwen/Qwen2.5-72B-Instruct", "base_url": "http://localhost:8000/v1"}`. The API key comes from
        `OPENAI_API_KEY` or the `api_key` entry.
    languages (`list` of `str`, *optional*): per case, `"en"` or `"zh"` (dataset column `language`); derived from
        the questions if not given.
    n_runs (`int`, *optional*, defaults to 2): judge runs per answer, averaged (the paper's 2).
    seed (`int`, *optional*, defaults to 42): seeds the example order of each run.
    flatten_newlines (`bool`, *optional*, defaults to `True`): show the judge each answer with its line breaks made
        spaces, as the released script did (`False`: keep them, as `--keep-newlines` does on the command line).

Returns:
    score (`float` or `None`): mean rating (1-10) over the answers with at least one parsed rating.
    scores (`list` of `float` or `None`): per answer, the mean of its parsed ratings (`None` if all runs failed).
    language_scores (`dict`): mean rating per language.
    num_scored (`int`): answers with a score.
    ratings (`list` of `list`): per answer, the rating of each run (`None` for a failed run).
    judge_replies (`list` of `list` of `str`): per answer, the judge's reply in each run.
    num_failed (`int`) and failures (`list` of `dict`): judge calls with no rating after retries
        (`index`, `run`, `error`, `reply`).
    usage (`dict`): tokens and requests spent now (cached replies cost nothing), cached and failed call counts.
    judge_model (`str`): the judge model, to be reported with the score.
    n_runs (`int`): judge runs per answer.
    flatten_newlines (`bool`): whether line breaks were made spaces for the judge.

Examples:
    >>> import evaluate
    >>> from datasets import load_dataset
    >>> from longalign_hf.metrics import LONGBENCH_CHAT
    >>> data = load_dataset("path/to/built/longbench_chat", "all", split="test")
    >>> metric = evaluate.load(LONGBENCH_CHAT)
    >>> results = metric.compute(
    ...     predictions=my_answers,
    ...     references=data["answer"],
    ...     questions=data["query"],
    ...     few_shots=data["few_shots"],
    ...     judge_template=data[0]["judge_template"],
    ...     languages=data["language"],
    ...     judge={"model": "gpt-4o-2024-05-13", "cache_dir": "judge_cache"},
    ... )
    >>> results["score"], results["judge_model"]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LongBenchChat(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "questions": datasets.Value("string"),
                }
            ),
            codebase_urls=["https://github.com/THUDM/LongAlign/tree/main/LongBench_Chat"],
            reference_urls=["https://arxiv.org/abs/2401.18058"],
        )

    def _compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        questions: Sequence[str],
        few_shots: Sequence[Sequence[dict[str, Any]]],
        judge_template: str,
        judge: dict[str, Any] | ChatClient,
        languages: Sequence[str] | None = None,
        n_runs: int = 2,
        seed: int = 42,
        flatten_newlines: bool = True,
    ) -> dict[str, Any]:
        client = judge if isinstance(judge, ChatClient) else ChatClient(**judge)
        return score_predictions(
            predictions,
            references,
            questions,
            few_shots,
            judge_template,
            client,
            languages=languages,
            n_runs=n_runs,
            seed=seed,
            flatten_newlines=flatten_newlines,
        )
