"""Self-Instruct from long documents: the documents (`documents`), the paper's prompts and their reply parser
(`prompts`), the generator (`generator`) and the `longalign data generate` command (`command`)."""
