"""LongBench-Chat: the judge prompt and scoring (`scoring`), the run over a model (`runner`), the `longalign eval
longbench-chat` command."""
