"""Text in, ids out: reading files, the vocabulary, the encoded corpus, training batches."""
