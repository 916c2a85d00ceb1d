"""Fine-tuning a GPTModel: classification (the book's chapter 6), instruction following (chapter 7), LoRA (appendix E).

instruction.py, classification.py and lora.py are pure torch (no Lightning): the chat in generate.py and
gpt.checkpoint use them. data.py and module.py hold the LightningDataModules and LightningModules.
"""
