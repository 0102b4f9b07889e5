"""Answers from a chat model for long prompts: through the chat template, with middle truncation by tokens.

LongAlign's evaluations (LongBench-Chat, needle in a haystack) give a model one long user message and read its
answer. Two rules matter for fair numbers: the prompt goes through the model's chat template (the released
LongBench-Chat script hard-codes a few formats and uses none for other models, which gives wrong scores), and a
prompt longer than the window is cut in the middle, keeping its first and last halves (the question is at the end).

`generate_chat_answers` runs a `transformers` model; `request_chat_answers` asks an OpenAI-compatible server
(e.g. `vllm serve`) that applies the chat template itself. `torch` and `transformers` are imported by the functions
that use them, so the `longalign` command can import this module and answer `--help` at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from longalign_hf import command_args
from longalign_hf.command_args import looks_like_a_path, one_line
from longalign_hf.errors import UserInputError
from longalign_hf.evaluation.run_folder import DTYPES

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from longalign_hf.llm_client import ChatClient

logger = logging.getLogger(__name__)

# How far (in tokens) a cut may move to fall between two whole characters: a UTF-8 character is at most 4 bytes, and
# byte-level tokens may straddle characters, so a few more.
_SEAM_SEARCH = 8
_REPLACEMENT = "\ufffd"


def middle_truncate(token_ids: Sequence[int], max_length: int) -> list[int]:
    """Keep the first `max_length // 2` and the last `max_length - max_length // 2` tokens if there are more.

    >>> middle_truncate([1, 2, 3, 4, 5, 6, 7], 4)
    [1, 2, 6, 7]
    >>> middle_truncate([1, 2, 3, 4, 5, 6, 7], 3)
    [1, 6, 7]
    """
    if max_length < 0:
        raise ValueError(f"`max_length` must be 0 or more, got {max_length}.")
    if len(token_ids) <= max_length:
        return list(token_ids)
    head = max_length // 2
    return list(token_ids[:head]) + list(token_ids[len(token_ids) - (max_length - head) :])


def truncate_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int | None) -> list[str]:
    """Cut every prompt longer than `max_length` tokens (counted without special tokens) in the middle, as the paper.

    The limit applies to the user message alone, before the chat template adds its tokens (the paper's 64,000 for
    a 64k model leaves room for the template and the answer). `None` keeps prompts whole. The seam falls between two
    whole characters: where `middle_truncate`'s cut would split a character over two tokens (a byte-level tokenizer
    and Chinese or emoji text), the head ends and the tail starts at the nearest token boundary inside the kept
    halves that decodes cleanly, so no replacement character (U+FFFD) appears and at most `max_length` tokens are
    kept.
    """
    if max_length is None:
        return list(prompts)
    truncated = []
    for prompt in prompts:
        token_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(token_ids) > max_length:
            logger.info("Prompt of %d tokens cut in the middle to %d tokens.", len(token_ids), max_length)
            head, tail = _clean_seam(
                tokenizer, token_ids, max_length // 2, len(token_ids) - (max_length - max_length // 2)
            )
            prompt = tokenizer.decode(list(token_ids[:head]) + list(token_ids[tail:]), skip_special_tokens=True)
        truncated.append(prompt)
    return truncated


def _clean_seam(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int], head: int, tail: int) -> tuple[int, int]:
    """Move the end of the head back and the start of the tail forward until neither cuts a character in two.

    A cut inside a character shows as a replacement character at the end of the decoded head or the start of the
    decoded tail. Each side moves at most `_SEAM_SEARCH` tokens; if no clean cut lies that close, it stays put.
    """

    def head_is_cut(end: int) -> bool:
        return end > 0 and tokenizer.decode(token_ids[max(0, end - _SEAM_SEARCH) : end]).endswith(_REPLACEMENT)

    def tail_is_cut(start: int) -> bool:
        return start < len(token_ids) and tokenizer.decode(token_ids[start : start + _SEAM_SEARCH]).startswith(
            _REPLACEMENT
        )

    clean_head = next((end for end in range(head, max(head - _SEAM_SEARCH, 0) - 1, -1) if not head_is_cut(end)), head)
    clean_tail = next(
        (start for start in range(tail, min(tail + _SEAM_SEARCH, len(token_ids)) + 1) if not tail_is_cut(start)), tail
    )
    return clean_head, clean_tail


# Weight files of a model folder (`save_pretrained`: one file, or shards with an index).
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def _local_folder(name_or_path: str) -> Path | None:
    """The local path `name_or_path` names (as transformers reads it: a local path wins), `None` for a Hub id."""
    path = Path(name_or_path).expanduser()
    return path if path.exists() else None


def load_tokenizer(name_or_path: str, flag: str = "--model (or --tokenizer)") -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(name_or_path)`, raising `UserInputError` (a one-line reason) if it cannot load.

    A local folder without any tokenizer file (`command_args.TOKENIZER_FILES`), e.g. a model saved without its tokenizer, is
    refused before `transformers` tries it, naming the folder and what it lacks.
    """
    from transformers import AutoTokenizer

    folder = _local_folder(name_or_path)
    if folder is not None and not folder.is_dir():
        raise _cannot_load("a tokenizer", name_or_path, "a file, not a folder", flag)
    if folder is not None and not any((folder / name).is_file() for name in command_args.TOKENIZER_FILES):
        raise _cannot_load(
            "a tokenizer",
            name_or_path,
            f"the folder holds no tokenizer file: none of {', '.join(command_args.TOKENIZER_FILES)}",
            flag,
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder) if folder is not None else name_or_path)
    except (OSError, ValueError) as error:  # no such id or folder, offline; files transformers cannot read
        raise _cannot_load("a tokenizer", name_or_path, error, flag) from None


def load_model_config(name_or_path: str) -> PretrainedConfig:
    """`AutoConfig.from_pretrained(name_or_path)`, raising `UserInputError` (a one-line reason) if it cannot load.

    A local folder without `config.json` (e.g. a tokenizer folder passed as the model) is refused naming the folder
    and what it lacks.
    """
    from transformers import AutoConfig

    folder = _local_folder(name_or_path)
    if folder is not None and not (folder / "config.json").is_file():
        what = "a file, not a folder" if not folder.is_dir() else "the folder has no config.json, so it holds no model"
        raise _cannot_load("a model config", name_or_path, what, "--model")
    try:
        return AutoConfig.from_pretrained(str(folder) if folder is not None else name_or_path)
    except (OSError, ValueError) as error:
        raise _cannot_load("a model config", name_or_path, error, "--model") from None


def _cannot_load(what: str, name_or_path: str, error: BaseException | str, flag: str) -> UserInputError:
    missing = looks_like_a_path(name_or_path) and not Path(name_or_path).expanduser().exists()
    reason = "no such folder" if missing else error if isinstance(error, str) else one_line(error)
    return UserInputError(
        f"Cannot load {what} from {name_or_path!r} ({reason}): pass a model folder or a Hub id that has one, with "
        f"{flag}"
    )


def check_model_options(dtype: object, attn_implementation: str | None) -> None:
    """Refuse a `dtype` or `attn_implementation` that `from_pretrained` would not take, before anything loads.

    `dtype`: `"auto"`, a floating-point dtype name (`run_folder.DTYPES`) or a `torch.dtype`. `attn_implementation`:
    `None` (transformers' choice), `"eager"`, a backend registered with `transformers.AttentionInterface` (sdpa,
    flash_attention_2, ... and ours, `sdpa_packed` and `varlen_packed`), or a Hub kernel
    `org/repo[@revision][:function]`.
    """
    import torch
    from transformers import AttentionInterface

    import longalign_hf.training.packed_attention  # noqa: F401  (registers sdpa_packed)
    import longalign_hf.training.varlen_attention  # noqa: F401  (registers varlen_packed)
    from longalign_hf.training.attention import hub_kernel_repo

    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point) and dtype not in DTYPES:
        raise UserInputError(f"--dtype {dtype!r} is not a model dtype: choose one of {', '.join(DTYPES)}")
    if attn_implementation is None:
        return
    names = ["eager", *AttentionInterface().valid_keys()]
    if attn_implementation not in names and hub_kernel_repo(attn_implementation) is None:
        raise UserInputError(
            f"--attn-implementation {attn_implementation!r} is not an attention backend: choose one of "
            f"{', '.join(names)}, or a Hub kernel as org/repo[@revision][:function] (e.g. "
            "kernels-community/flash-attn2)"
        )


def check_served_options(dtype: object, attn_implementation: str | None, batch_size: int) -> None:
    """Refuse the options that only shape a locally loaded model when the answers come from a server
    (`--generation-base-url`): the server loads, batches and runs its model itself, so they would do nothing."""
    given = [
        flag
        for flag, value, default in (
            ("--dtype", dtype, "auto"),
            ("--attn-implementation", attn_implementation, None),
            ("--batch-size", batch_size, 1),
        )
        if value != default
    ]
    if given:
        raise UserInputError(
            f"{', '.join(given)} shape a model loaded here, but --generation-base-url reads the answers from a server, "
            "which loads and batches its model itself: leave them out, or drop --generation-base-url"
        )


def load_causal_lm(
    name_or_path: str, dtype: object = "auto", attn_implementation: str | None = None
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` in eval mode, on the GPUs when there are any, with every input checked.

    The options are checked first (`check_model_options`), a local folder must hold `config.json` and weights, and a
    model that still cannot load (a backend the machine lacks, a checkpoint transformers cannot read) raises
    `UserInputError` with the first line of the reason, naming the flags.
    """
    import torch
    from transformers import AutoModelForCausalLM

    check_model_options(dtype, attn_implementation)
    load_model_config(name_or_path)
    folder = _local_folder(name_or_path)
    if folder is not None and not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise _cannot_load(
            "a model", name_or_path, "the folder has config.json but no weights (*.safetensors or *.bin)", "--model"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder) if folder is not None else name_or_path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            device_map="auto" if torch.cuda.is_available() else None,
        )
    except (OSError, ValueError, ImportError) as error:
        raise UserInputError(
            f"Cannot load the model {name_or_path!r} (--dtype {dtype}, --attn-implementation "
            f"{attn_implementation or 'default'}): {one_line(error)}"
        ) from None
    return model.eval()


def chat_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """`prompt` as one user turn through the model's chat template, ending with the generation prompt."""
    if tokenizer.chat_template is None:
        raise UserInputError(
            f"The tokenizer of {tokenizer.name_or_path!r} has no chat template. Long-context evaluations must see the "
            "model's own chat format: use a chat/instruct model, or set `tokenizer.chat_template`."
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def generate_chat_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 1024,
    max_length: int | None = 64_000,
    batch_size: int = 1,
    temperature: float = 1.0,
    seed: int = 42,
    on_answer: Callable[[int, str], None] | None = None,
    desc: str = "generating",
) -> list[str]:
    """Answer each prompt as one user turn through the model's chat template.

    Args:
        model: a causal LM, already on its device(s).
        tokenizer: its tokenizer, with a chat template.
        prompts: one user message per answer (for LongBench-Chat, document + question).
        max_new_tokens: answer length cap (the paper: 1024).
        max_length: prompts longer than this many tokens are cut in the middle (see `truncate_prompts`); the paper
            uses 64,000.
        batch_size: prompts per `generate` call, left-padded. 1 reproduces the paper's per-case seeding exactly.
        temperature: > 0 samples at this temperature (other sampling settings come from the model's generation
            config), 0 decodes greedily. The paper's script: 1.0.
        seed: the random seed set before each batch (the paper's script seeds 42 before each case).
        on_answer: called as `on_answer(index, answer)` after each answer, e.g. to save it.
        desc: label of the progress bar.

    Returns:
        The answers (special tokens removed, surrounding whitespace stripped), in the order of `prompts`.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import set_seed

    if batch_size < 1:
        raise UserInputError(f"`batch_size` must be at least 1, got {batch_size}.")
    texts = [chat_text(tokenizer, prompt) for prompt in truncate_prompts(tokenizer, prompts, max_length)]
    if tokenizer.pad_token is None:  # only batches of more than one need it; the EOS token is masked out anyway
        logger.info("The tokenizer has no padding token: padding with its EOS token %r.", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    answers: list[str] = []
    with tqdm(total=len(texts), desc=desc) as progress:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            # The template already holds the special tokens (e.g. BOS), so the tokenizer must not add them again.
            inputs = tokenizer(
                batch, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
            ).to(model.device)
            set_seed(seed)
            with torch.no_grad():
                output = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            for offset, answer in enumerate(tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                answers.append(answer.strip())
                if on_answer is not None:
                    on_answer(start + offset, answers[-1])
            progress.update(len(batch))
    return answers


def serving_client(
    model: str,
    base_url: str,
    api_key: str | None,
    concurrency: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> ChatClient:
    """The client of an OpenAI-compatible generation server (`--generation-base-url`) serving `model`, sampling as a
    local run would (`temperature`, `max_new_tokens`, `seed`), at most `concurrency` requests in flight."""
    from longalign_hf.llm_client import ChatClient

    return ChatClient(
        model, base_url=base_url, api_key=api_key, temperature=temperature, max_concurrency=concurrency,
        max_tokens=max_new_tokens, seed=seed,
    )  # fmt: skip


def request_chat_answers(
    client: ChatClient,
    prompts: Sequence[str],
    on_answer: Callable[[int, str], None] | None = None,
    desc: str = "generating",
) -> list[str | None]:
    """Answer each prompt as one user turn on an OpenAI-compatible server (which applies the chat template).

    Truncate the prompts first with `truncate_prompts` and the model's tokenizer. Sampling settings (temperature,
    `max_tokens`, seed) are the client's. Returns the stripped answers, `None` where the server failed after its
    retries (the client logs each failure as a warning); `on_answer(index, answer)` is called for each answer as it
    arrives.
    """
    results = client.complete(
        [[{"role": "user", "content": prompt}] for prompt in prompts],
        desc=desc,
        on_result=lambda index, result: (
            on_answer(index, result.text.strip()) if on_answer is not None and result.error is None else None
        ),
    )
    return [result.text.strip() if result.error is None else None for result in results]
