"""Shape helpers shared by the ops' presets, and the real model sizes they are drawn from."""

# Llama-3-8B's model and MLP hidden sizes, the real shapes of the presets.
LLAMA3_8B_DIM, LLAMA3_8B_HIDDEN = 4096, 14336
# Its projections as (K, N): attention q/o, MLP up/gate, MLP down, attention k/v.
LLAMA3_8B_PROJECTIONS = [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 1024)]


def mnk(m: int, n: int, k: int) -> dict[str, int]:
    """A GEMM-family shape in the ops' (M, N, K) dimension order, for presets."""
    return {"M": m, "N": n, "K": k}


# The GEMM regimes of KernelBench level 1 (problems 1, 2, 6, 7, 8, 9: square, standard, large
# K, small K, irregular sizes, tall-skinny), as (M, N, K). The irregular K (2949) gives 16-bit
# rows of 5898 bytes, which a tensor descriptor cannot take: that point measures the tiled
# fallback.
KERNELBENCH_GEMMS = [(2048, 2048, 2048), (1024, 2048, 4096), (256, 256, 131072),
                     (16384, 16384, 32), (8205, 5921, 2949), (16384, 16384, 16)]
