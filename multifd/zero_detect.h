// Zero-page detection for multifd sender threads: core's (core/zero_page.h),
// the fastest variant the CPU offers, chosen once at run time.
#pragma once

#include "core/zero_page.h"

namespace ferry::multifd {

using ferry::AvailableZeroChecks;
using ferry::BestZeroCheck;
using ferry::ZeroCheck;

}  // namespace ferry::multifd
