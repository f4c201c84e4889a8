"""AnomalyMatch registry."""
