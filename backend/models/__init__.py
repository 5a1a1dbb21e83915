"""The model chain: tokenizer (frames -> token map), token decoder, diffusion transformer, encoders, checkpoints."""
