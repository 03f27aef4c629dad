// Drives kernels::use_best_openblas_core() for tests/kernels/openblas_test.cpp. Started with
// OPENBLAS_CORETYPE=Prescott, OpenBLAS loads its generic core; the probe then removes the
// variable, as if nobody had set it, so the function sees what a user on a CPU model 0.3.21
// does not know sees: a generic fallback and no OPENBLAS_CORETYPE. The re-executed probe
// prints the function's line and the core it then runs. `openblas_probe keep` leaves the
// variable set, as a user or the machine would.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/openblas.h"

int main(int argc, char** argv) {
  const bool keep = argc > 1 && std::string(argv[1]) == "keep";
  if (!keep && std::getenv("LOOM_OPENBLAS_FALLBACK") == nullptr) ::unsetenv("OPENBLAS_CORETYPE");
  const std::string line = loom::kernels::use_best_openblas_core();
  std::printf("%s\ncore=%s\n", line.c_str(), loom::kernels::openblas_core().c_str());
  return 0;
}
