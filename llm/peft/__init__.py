"""Parameter-efficient fine-tuning: `methods` (the `peft.*` config section, applying a method
to a built model, what it trains), `lora` (LoRA and prefix adapters), `quant` (NF4 / int8
storage for QLoRA) and `modules` (walking and replacing modules by path)."""
