"""AnomalyMatch training."""
