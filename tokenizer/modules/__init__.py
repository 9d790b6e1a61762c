"""Building blocks of the tokenizer networks: transformer layer, transposed convs, RVQ, iSTFT."""
