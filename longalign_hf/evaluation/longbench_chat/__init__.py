"""LongBench-Chat: the judge prompt and scoring (`scoring`), the data set's cases (`cases`), the run over a model
(`runner`), its summary (`summary`) and the `longalign eval longbench-chat` command (`command`)."""
