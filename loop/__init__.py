"""AnomalyMatch's whole labelling loop, orchestrated across the packages: ``training`` (FixMatch, the
retrain watcher), ``registry`` (versions, the gate, promotion), ``serving`` (the scoring service, bulk
jobs) and ``labeling`` (the client an expert labels with). Only this package imports all of them; the
others stay independent of it. ``loop.demo`` is ``anomalymatch demo``, the main job."""
