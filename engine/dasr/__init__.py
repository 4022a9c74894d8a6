"""The DASR* method: backbones, the backward rule and its fast variants, regions, descriptors,
re-localisation windows and the extractor. Imports only `engine.types`/`engine.threads`: no other room."""
