"""Task files shipped with `llm.eval` (package data read through importlib.resources)."""
