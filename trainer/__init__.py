"""Model, training loop, metrics and run records for the R-GCN tagger."""
