"""Search over an indexed collection: the faiss index, the searcher, re-localisation maps and feedback.
May import `engine.dasr` and `engine.store`; never `engine.project` or `engine.evaluation`."""
