"""A photo folder as a project: its state folder, its lock, incremental indexing and its searcher.
May import `engine.dasr`, `engine.store` and `engine.search`; never `engine.evaluation`."""
