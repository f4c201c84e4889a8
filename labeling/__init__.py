"""AnomalyMatch labeling."""
