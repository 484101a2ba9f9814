"""GPU readiness without a GPU: the ahead-of-time Triton audit (triton_audit, matrix, compile),
the CUDA kernels' ptxas resource table (cuda_usage), and the tables of docs/gpu-readiness.md and
`dalle2-fast info --gpu-plan` (report, plan). Tools, not imported by the package at run time."""
