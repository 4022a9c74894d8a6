"""Measuring retrieval quality against ground truth: metrics, the evaluation runner, baselines.
Sits on top: may import `engine.dasr`, `engine.store` and `engine.search`; nothing imports it."""
