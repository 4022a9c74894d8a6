"""Thin Qt widgets. Never import torch or faiss here."""
