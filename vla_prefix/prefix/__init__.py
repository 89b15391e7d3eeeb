"""Per-stream prefixes: configuration, trainable module, tensors for a forward, and prefix files."""
