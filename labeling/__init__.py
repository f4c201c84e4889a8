"""AnomalyMatch labelling, the client side: a Python client and the ``anomalymatch label`` verbs."""

from labeling.client import Client, ServiceError, read_label_sheet

__all__ = ["Client", "ServiceError", "read_label_sheet"]
