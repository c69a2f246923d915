// SPDX-License-Identifier: MIT
// Summary statistics shared by the bench-<topic> programs: one definition of
// median, percentile and spread, so a "median" or a "p90" means the same in
// every benchmark's table and RESULT line. Header-only: each bench target
// already has the repository root on its include path (bench/CMakeLists.txt
// treats every subdirectory with a CMakeLists.txt as a topic; this one has
// none, so it is no topic).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <utility>
#include <vector>

namespace vlapic::bench {

// The samples behind one figure, sorted once. Percentiles are by nearest
// rank: the sample at index round(q * (n - 1)), so q = 0 is the minimum,
// q = 1 the maximum and q = 0.5 the middle sample of an odd count. No
// samples summarise as zeros with count() == 0; callers that can end up
// with none say so next to the figure.
class Samples {
public:
  explicit Samples(std::vector<double> values) : sorted(std::move(values)) {
    std::sort(sorted.begin(), sorted.end());
  }

  size_t count() const { return sorted.size(); }
  double percentile(double q) const {
    if (sorted.empty()) return 0;
    q = std::clamp(q, 0.0, 1.0);
    return sorted[static_cast<size_t>(std::lround(q * static_cast<double>(sorted.size() - 1)))];
  }
  double median() const { return percentile(0.5); }
  double min() const { return percentile(0); }
  double max() const { return percentile(1); }

private:
  std::vector<double> sorted;
};

// The figures the benchmarks print: the median with the 10th-90th
// percentile spread beside it, the extremes, and how many samples.
struct Spread {
  double median = 0, p10 = 0, p90 = 0, min = 0, max = 0;
  size_t samples = 0;

  // The same figures per part, e.g. per operation of a batch of `parts`.
  Spread dividedBy(double parts) const {
    return Spread{median / parts, p10 / parts, p90 / parts, min / parts, max / parts, samples};
  }
};

inline Spread spreadOf(std::vector<double> values) {
  Samples samples(std::move(values));
  return Spread{samples.median(), samples.percentile(0.1), samples.percentile(0.9),
                samples.min(),    samples.max(),           samples.count()};
}

}  // namespace vlapic::bench
