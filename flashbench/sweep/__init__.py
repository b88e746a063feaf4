"""The parent side of a sweep: cases to workers, rows to disk; no torch, no CUDA."""
