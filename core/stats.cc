#include "core/stats.h"

#include <cstdio>

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

std::string FormatBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

StatsValue StatsValue::Object(std::initializer_list<std::pair<std::string_view, StatsValue>> members) {
  StatsValue o;
  for (const auto& [key, value] : members) o.Set(key, value);
  return o;
}

StatsValue& StatsValue::Set(std::string_view key, StatsValue v) {
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] == key) return items_[i] = std::move(v);
  }
  keys_.emplace_back(key);
  items_.push_back(std::move(v));
  return items_.back();
}

void MigrationStats::Set(std::shared_ptr<const TransportStats> t) {
  for (auto& have : transports) {
    if (have->name() == t->name()) {
      have = std::move(t);
      return;
    }
  }
  transports.push_back(std::move(t));
}

void MigrationStats::SetIfAbsent(std::shared_ptr<const TransportStats> t) {
  if (!Find(t->name())) transports.push_back(std::move(t));
}

const TransportStats* MigrationStats::Find(std::string_view name) const {
  for (const auto& t : transports) {
    if (t->name() == name) return t.get();
  }
  return nullptr;
}

}  // namespace ferry
