"""Sampling: `decode` (jitted prefill + decode loop over the KV cache), `filters` (temperature,
top-k/p, min-p, penalties as per-row arrays), `sampler` (host-side text in, text out, stops,
chat) and `beam` (beam search)."""
