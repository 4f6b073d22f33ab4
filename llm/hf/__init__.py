"""Hugging Face interop: `convert` (safetensors import / export onto our Transformer) and
`config` (config.json ↔ ModelConfig and the parameter-name mapping)."""
