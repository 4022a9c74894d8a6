"""Files on disk: image loading, atomic writes, the region store, labels and COCO.
Imports only `engine.types` (no torch, no faiss, no other room)."""
