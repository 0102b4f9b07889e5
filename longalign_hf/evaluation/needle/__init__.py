"""Needle in a haystack and RULER probes: the haystack (`haystack`), the probes and their prompts (`probes`), the run
over a model (`runner`), its scores and summary (`summary`), its heatmaps (`heatmap`) and the `longalign eval needle`
command (`command`)."""
