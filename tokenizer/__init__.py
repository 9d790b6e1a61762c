"""MiMo-Audio-compatible audio tokenizer (25 Hz RVQ): encode, decode, streaming decode.

Stands alone: imports nothing from the other packages of this project."""
