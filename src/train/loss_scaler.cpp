#include "train/loss_scaler.h"

#include <cmath>

#include "core/check.h"

namespace loom {

LossScaler::LossScaler(bool enabled) : LossScaler(enabled, Options{}) {}

LossScaler::LossScaler(bool enabled, const Options& opt) : enabled_(enabled), opt_(opt) {
  LOOM_CHECK(opt.init_scale > 0 && opt.growth_factor > 1 && opt.backoff_factor > 0 &&
                 opt.backoff_factor < 1 && opt.growth_interval >= 1,
             "loss scaler: bad options");
  st_.scale = opt.init_scale;
}

bool LossScaler::update(bool found_inf) {
  if (!enabled_) return !found_inf;
  if (found_inf) {
    st_.scale *= opt_.backoff_factor;
    st_.growth_tracker = 0;
    return false;
  }
  if (++st_.growth_tracker == opt_.growth_interval) {
    st_.scale *= opt_.growth_factor;
    st_.growth_tracker = 0;
  }
  return true;
}

void LossScaler::restore(const LossScalerState& s) {
  LOOM_REQUIRE(std::isfinite(s.scale) && s.scale > 0 && s.growth_tracker >= 0 &&
                 s.growth_tracker < opt_.growth_interval,
             "loss scaler state scale={} growth_tracker={} is not one a run can be in",
             s.scale, s.growth_tracker);
  st_ = s;
}

}  // namespace loom
