"""The SFT mix: ShareGPT normalization and cleaning (`conversations`), token lengths and their histogram
(`length_stats`), the build (`build`), its report (`report`) and card (`card`), and the `longalign data build sft`
command (`command`)."""
