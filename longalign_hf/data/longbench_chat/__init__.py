"""LongBench-Chat as a data set: its source files and their checks (`source`), the paper's format (`format`), the
`datasets` builder (`builder`), the Hub-ready folder (`hub_folder`) and its card (`card`), and the
`longalign data build longbench-chat` command (`command`)."""
