"""Model families of dalle2_fast (each a module with a typed dataclass config)."""
