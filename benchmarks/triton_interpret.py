"""Imported by benchmarks/gpu_check.py before anything that imports Triton: with --smoke on the command line it sets
TRITON_INTERPRET=1. Triton reads the variable when a function is decorated, its own `tl.cdiv` and the like on its
first import, and importing timm already imports Triton (through torchvision and torch._dynamo); set later, the
project's interpreted kernels would call Triton's compiled helpers and fail."""

import os
import sys

if "--smoke" in sys.argv[1:]:
    os.environ.setdefault("TRITON_INTERPRET", "1")
