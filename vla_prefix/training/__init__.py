"""One trainer for every mode: pretrain, prefix, prompt, lora, full, head, scratch."""
