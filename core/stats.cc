#include "core/stats.h"

namespace ferry {

std::string_view StateName(MigrationState s) {
  switch (s) {
    case MigrationState::kNone: return "none";
    case MigrationState::kSetup: return "setup";
    case MigrationState::kActive: return "active";
    case MigrationState::kDevice: return "device";
    case MigrationState::kCompleted: return "completed";
    case MigrationState::kFailed: return "failed";
    case MigrationState::kCancelling: return "cancelling";
    case MigrationState::kCancelled: return "cancelled";
  }
  return "unknown";
}

}  // namespace ferry
