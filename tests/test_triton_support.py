"""What the triton backend says runs is what its kernels implement."""

from flashbench.kernels import triton_decode, triton_flash_bwd, triton_flash_support


def test_the_dispatch_knows_what_each_kernel_implements():
    assert triton_flash_support.BACKWARD_FEATURES == triton_flash_bwd.FEATURES
    assert triton_flash_support.DECODE_FEATURES == triton_decode.FEATURES
    assert triton_flash_support.FEATURES == {"window", "softcap", "ragged", "paged"}
