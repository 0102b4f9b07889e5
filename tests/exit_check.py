"""A 2-process training that ends by returning or by raising, under `run_then_exit`, for the teardown tests.

`accelerate launch --num_processes 2 tests/exit_check.py {return,raise} OUT_DIR`: trains one step over gloo, calls
`end_training`, records (rank 0) whether the process group is still alive, then returns or raises.
"""

import sys

import datasets
import torch

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.distributed import end_training, run_then_exit


def main(ending: str, output_dir: str):
    tokenizer = build_byte_tokenizer()
    rows = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (8, 12, 9, 7)]
    args = LongAlignConfig(
        output_dir=output_dir, max_length=64, max_steps=1, per_device_train_batch_size=1, report_to="none",
        save_strategy="no", use_cpu=True,
    )  # fmt: skip
    trainer = LongAlignSFTTrainer(
        model=build_tiny_model(tokenizer, max_position_embeddings=64), args=args,
        train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    end_training(trainer)
    if trainer.accelerator.is_main_process:
        print(f"group alive after end_training: {torch.distributed.is_initialized()}", flush=True)
    if ending == "raise":
        raise RuntimeError("boom after training")
    return trainer


if __name__ == "__main__":
    run_then_exit(main, *sys.argv[1:3])
