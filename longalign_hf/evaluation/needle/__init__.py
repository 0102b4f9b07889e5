"""Needle in a haystack and RULER probes: the haystack, the probes, the run over a model, its heatmaps and the
`longalign eval needle` command."""
