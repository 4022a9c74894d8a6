"""The retrieval engine: DASR/DASR* regions, descriptors, index, search. Never imports Qt."""
