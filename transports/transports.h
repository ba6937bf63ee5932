// The transports built into ferry, and Plan() over them (core/setup.h).
//
//   FERRY_ASSIGN_OR_RETURN(MigrationPlan plan, Plan(Side::kDestination, spec));
#pragma once

#include "../core/setup.h"

namespace ferry {

// socket, multifd, file — in the order their checks run and their names are
// listed in messages.
const TransportRegistry& BuiltinTransports();

// Plan(BuiltinTransports(), side, spec).
Result<MigrationPlan> Plan(Side side, const MigrationSpec& spec);

}  // namespace ferry
