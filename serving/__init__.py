"""AnomalyMatch serving."""
