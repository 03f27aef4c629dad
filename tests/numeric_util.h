// Small numeric helpers shared by tests.
#pragma once

#include <cmath>
#include <vector>

namespace loom::test {

// ||a - b|| / ||b|| (Frobenius), in double.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace loom::test
