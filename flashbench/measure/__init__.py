"""The worker side: one case measured on the device (torch, triton, NVML)."""
