"""Runtime hook of the CPU-only bundle (DASR_BUNDLE_CPU_ONLY=1 at build time).

That bundle keeps only the CUDA libraries torch links at import; the ones it loads on first GPU use
(cuDNN's engines, cuSOLVER...) are left out. Hiding every GPU makes `--device auto` pick the CPU
instead of failing halfway through a CUDA call on a machine that has a GPU.
"""
import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""
