"""`longalign eval needle`: needle in a haystack as the paper draws it (depth x length heatmap), and RULER's NIAH probes.

```
longalign eval needle --model THUDM/LongAlign-7B-64k
longalign eval needle --model ./my-run --lengths 1k,4k,16k --depths 5 --probes single,multikey,multivalue
longalign eval needle --model THUDM/LongAlign-7B-64k --generation-base-url http://localhost:8000/v1
```

No API is needed: the model answers locally through its own chat template (greedy by default) and the answers are
scored by string matching. `--generation-base-url` reads the answers from an OpenAI-compatible server instead (vLLM,
SGLang: a long sweep is where a served model is fastest), every request in flight at once up to
`--generation-concurrency`; an LLM-judge score can be added with `--judge-model`. When `--model` is a local folder, the
heatmaps and the summary table are added to its model card (`README.md`), replacing those of an earlier run
(`longalign_hf.evaluation.model_card`; `--no-model-card` leaves the card alone).

How a prompt is built and the probes are in `longalign_hf.evaluation.needle.probes`, the output folder in
`longalign_hf.evaluation.needle.runner`.

Light at import (torch and transformers load when the command runs), so `longalign --help` answers at once.
"""

from __future__ import annotations

import argparse
import datetime
import re
from pathlib import Path
from typing import Any

from longalign_hf import command_args
from longalign_hf.evaluation import run_folder
from longalign_hf.evaluation.model_card import record_in_model_card
from longalign_hf.evaluation.needle.probes import (
    DEFAULT_LENGTHS,
    DEFAULT_NUM_DEPTHS,
    MAX_NUM_DEPTHS,
    NEEDLE_TYPES,
    PROBES,
)
from longalign_hf.evaluation.needle.runner import default_output_dir, run_needle
from longalign_hf.evaluation.needle.summary import card_section, format_summary, shortfall

# The shortest length accepted on the command line: no chat prompt with a question and a needle is shorter.
MIN_LENGTH = 100


def _parse_lengths(value: str) -> list[int]:
    """`"1000,8k,32k"` -> `[1000, 8000, 32000]`; a length under `MIN_LENGTH` is refused (`1,000` is two lengths).

    >>> _parse_lengths("1000,8k,1.5k")
    [1000, 8000, 1500]
    """
    try:
        lengths = [
            int(float(item[:-1]) * 1000) if item.lower().endswith("k") else int(item)
            for item in (item.strip() for item in value.split(","))
        ]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a list of lengths: give token counts separated by commas, e.g. 1000,8k,32k."
        ) from None
    short = [length for length in lengths if length < MIN_LENGTH]
    if short:
        hint = ""
        if re.fullmatch(r"\d{1,3}(,\d{3})+", value.strip()):
            hint = f"did you mean {value.strip().replace(',', '')}? "
        raise argparse.ArgumentTypeError(
            f"{value!r} holds lengths under {MIN_LENGTH} tokens ({', '.join(map(str, short))}): {hint}lengths are "
            "comma-separated token counts of the whole prompt, e.g. 1000,8k,32k (write 1000 or 1k, not 1,000)."
        )
    return lengths


def _parse_depths(value: str) -> int | list[float]:
    """`"10"` -> 10 evenly spaced depths (1 to `MAX_NUM_DEPTHS`); `"0,50,100"` -> those depths."""
    try:
        depths = [float(item) for item in value.split(",") if item.strip()] if "," in value else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a number of depths (e.g. 10) nor a list of percentages (e.g. 0,50,100)."
        ) from None
    if isinstance(depths, int) and not 1 <= depths <= MAX_NUM_DEPTHS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of depths from 1 to {MAX_NUM_DEPTHS} (more would repeat depths rounded to "
            "whole percents): give a count such as 10, or the depths themselves, e.g. 0,50,100."
        )
    if isinstance(depths, list):
        outside = [depth for depth in depths if not 0 <= depth <= 100]
        repeated = sorted({depth for depth in depths if depths.count(depth) > 1})
        if not depths or outside or repeated:
            problem = (
                "no depth" if not depths else f"depths outside 0-100: {outside}" if outside else f"repeats {repeated}"
            )
            raise argparse.ArgumentTypeError(
                f"{value!r} has {problem}: give percentages from 0 to 100, each once, e.g. 0,50,100."
            )
    return depths


def _parse_probes(value: str) -> list[str]:
    probes = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [probe for probe in probes if probe not in PROBES]
    if unknown or not probes:
        raise argparse.ArgumentTypeError(f"Unknown probes {unknown or value!r}: choose from {','.join(PROBES)}.")
    return probes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `longalign eval needle` other than `--model`."""
    grid = parser.add_argument_group("probes (defaults: the paper's)")
    grid.add_argument(
        "--lengths",
        type=_parse_lengths,
        default=list(DEFAULT_LENGTHS),
        help="prompt lengths in tokens of the chat-templated prompt, comma-separated, `k` = 1000 (default: 10 from 1k "
        "to 60k, the release's config: " + ",".join(map(str, DEFAULT_LENGTHS)) + ")",
    )
    grid.add_argument(
        "--depths",
        type=_parse_depths,
        default=DEFAULT_NUM_DEPTHS,
        help="a number of depths evenly spaced from 0 to 100%% of the haystack, or comma-separated depths "
        f"(default: {DEFAULT_NUM_DEPTHS})",
    )
    grid.add_argument(
        "--probes",
        type=_parse_probes,
        default=["single"],
        help="comma-separated: single (the paper's needle), multikey, multivalue (RULER's NIAH) (default: single)",
    )
    grid.add_argument(
        "--haystack-dir",
        help="folder of .txt files to use as haystack (default: the prose of the Python documentation that ships "
        "with CPython)",
    )
    grid.add_argument(
        "--num-needles",
        type=command_args.count,
        default=4,
        help="needles of the multikey and multivalue probes (default: 4, RULER's)",
    )
    grid.add_argument("--key-type", choices=NEEDLE_TYPES, default="words", help="RULER keys (default: words)")
    grid.add_argument("--value-type", choices=NEEDLE_TYPES, default="numbers", help="RULER values (default: numbers)")
    grid.add_argument(
        "--seed",
        type=command_args.seed,
        default=42,
        help="seed of RULER keys, values and depths, and of sampling (42)",
    )
    grid.add_argument(
        "--output-dir", help="where records, results, heatmaps and summary go (default: outputs/needle/MODEL)"
    )

    gen = parser.add_argument_group("generation")
    gen.add_argument("--tokenizer", help="tokenizer for lengths and the chat template (default: --model)")
    gen.add_argument("--max-new-tokens", type=command_args.count, default=64, help="answer length cap (default: 64)")
    gen.add_argument(
        "--temperature",
        type=command_args.at_least_zero,
        default=0.0,
        help="sampling temperature, 0 for greedy (default: 0)",
    )
    gen.add_argument(
        "--batch-size",
        type=command_args.count,
        default=1,
        help="prompts of the same length per generate call (default: 1)",
    )
    gen.add_argument(
        "--dtype",
        default="auto",
        choices=run_folder.DTYPES,
        help="model weights dtype (default: auto, the checkpoint's)",
    )
    gen.add_argument("--attn-implementation", help=run_folder.ATTN_IMPLEMENTATION_HELP)
    gen.add_argument(
        "--generation-base-url",
        help="read answers from this OpenAI-compatible server (e.g. `vllm serve MODEL`: http://localhost:8000/v1), "
        "which must serve --model; the chat template is the server's, --tokenizer (default --model) measures the "
        "prompts",
    )
    gen.add_argument("--generation-api-key", help="API key of that server (default: OPENAI_API_KEY or none)")
    gen.add_argument(
        "--generation-concurrency", type=command_args.count, default=8, help="requests in flight to it (default: 8)"
    )
    gen.add_argument(
        "--max-model-length",
        type=command_args.count,
        help="the model's context window in tokens; lengths whose prompt plus --max-new-tokens exceed it are skipped "
        "with a warning (default: the config's max_position_embeddings)",
    )

    judge = parser.add_argument_group("optional LLM-judge score of the single probe (1-10, the release's prompt)")
    judge.add_argument("--judge-model", help="judge model, recorded with the score (default: no judge)")
    judge.add_argument("--judge-base-url", help="OpenAI-compatible judge server (default: the OpenAI API)")
    judge.add_argument(
        "--judge-api-key", help="judge API key (default: the OPENAI_API_KEY environment variable, safer than this)"
    )
    judge.add_argument(
        "--judge-concurrency", type=command_args.count, default=8, help="judge requests in flight (default: 8)"
    )
    parser.add_argument("--allow-incomplete", action="store_true", help=run_folder.ALLOW_INCOMPLETE_HELP)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`run_needle` keyword arguments (all but `model`) from options parsed with `add_arguments`."""
    names = (
        "tokenizer", "lengths", "depths", "probes", "haystack_dir", "output_dir", "max_new_tokens", "batch_size",
        "temperature", "seed", "num_needles", "key_type", "value_type", "dtype", "attn_implementation",
        "max_model_length", "judge_model", "judge_base_url", "judge_api_key", "judge_concurrency",
        "generation_base_url", "generation_api_key", "generation_concurrency",
    )  # fmt: skip
    return {name: getattr(args, name) for name in names}


def _main(args: argparse.Namespace) -> int:
    results = run_needle(args.model, **options_from_args(args))
    print(format_summary(results))
    if not args.no_model_card:
        _add_to_model_card(args, results)
    return run_folder.exit_status(shortfall(results), args.allow_incomplete)


def _add_to_model_card(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The heatmaps (copied next to the card as `needle_heatmap_*.png`) and the summary, in `--model`'s card."""
    output_dir = Path(args.output_dir) if args.output_dir is not None else default_output_dir(args.model)
    images = [(output_dir / name, f"needle_{name}") for name in results["heatmaps"]]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    missing = shortfall(results)
    record_in_model_card(
        args.model,
        "needle",
        card_section(results, [name for _, name in images], date),
        images=images,
        skip_reason=None if missing is None else f"the results are incomplete ({missing})",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign eval needle`."""
    parser = subparsers.add_parser(
        "needle",
        help="needle in a haystack: depth x length heatmap of retrieval (the paper's needle, RULER's NIAH probes)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model path or Hub id (with --generation-base-url: the model name the server serves)",
    )
    parser.add_argument(
        "--no-model-card",
        action="store_true",
        help="leave a local --model folder's README.md as it is (default: add the heatmaps and summary to it)",
    )
    add_arguments(parser)
    parser.set_defaults(func=_main)
