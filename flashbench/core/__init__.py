"""The vocabulary: cases, rows, configs, costs, backends' declarations; no torch."""
