"""The retrieval engine, never importing Qt. Rooms, each importing only those before it:
`types`/`threads`/`netguard` (shared) < `dasr` (the method) | `store` (files) < `search` < `project` < `evaluation`."""
