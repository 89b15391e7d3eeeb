"""The tabletop suite (placeholder)."""
