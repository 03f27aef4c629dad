// OpenBLAS as a competitor (PyTorch's fp32 matmul on Debian) and as loom's second GEMM
// backend: which kernel set ("core") it runs, and how many threads.
//
// OpenBLAS 0.3.21 (Debian 12) picks its core when the library loads and falls back to the
// generic Prescott kernels on CPU models it does not know (e.g. Xeons of family 6 model 207,
// which have AVX-512): 4x slower. OPENBLAS_CORETYPE names the core instead, but it is read
// only at load time, so a benchmark that wants the right core sets it and re-executes itself.
#pragma once

#include <string>
#include <string_view>

#include "core/threads.h"

namespace loom::kernels {

struct CpuIsa {
  bool avx2 = false;    // with FMA
  bool avx512 = false;  // F, CD, BW, DQ, VL (what OpenBLAS's SkylakeX kernels use)
};

CpuIsa host_isa();

// The CPU's model name and the features that decide GEMM speed, for benchmark reports:
// e.g. "AMD EPYC (avx2 avx512f avx512_bf16; no amx_bf16)".
std::string cpu_summary();

// The core OpenBLAS is running (openblas_get_corename), e.g. "Haswell", "Prescott".
std::string openblas_core();

// The OPENBLAS_CORETYPE that matches this CPU when `core` is a generic fallback without
// AVX2 on a CPU that has it: "SKYLAKEX" with AVX-512, "HASWELL" with AVX2; "" otherwise
// (a core with AVX2 is OpenBLAS's own choice for the model and is kept).
std::string better_openblas_coretype(std::string_view core, const CpuIsa& isa);

// For benchmarks, before anything else runs: when OPENBLAS_CORETYPE is unset and
// better_openblas_coretype() names a core, sets it and re-executes this process (same pid,
// same arguments; before MPI_Init, so mpirun's ranks may do it too). An OPENBLAS_CORETYPE
// set by the user or the machine is kept as it is. Returns a line for the report, e.g.
// "OpenBLAS core SkylakeX (OPENBLAS_CORETYPE=SKYLAKEX: OpenBLAS 0.3.21 fell back to
// Prescott)".
std::string use_best_openblas_core();

// choose_threads(requested, host_share()) applied to OpenMP (oneDNN and loom's kernels) and
// to OpenBLAS's own thread pool; returns the choice.
ThreadChoice set_compute_threads(int requested);

}  // namespace loom::kernels
