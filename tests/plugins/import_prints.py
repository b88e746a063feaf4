"""A correct plugin that prints at import, from Python and from C (fd 1), as chatty libraries do."""

import os

import flashbench

print("import_prints: hello from print()")
os.write(1, b"import_prints: hello from fd 1\n")


@flashbench.register_backend("prints-identity")
def identity(q, k, v, *, causal, scale):
    """Attention written out in torch, from a plugin that prints at import."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
