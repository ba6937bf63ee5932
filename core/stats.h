// Migration state and statistics, shaped like QMP's query-migrate.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry {

enum class MigrationState {
  kNone,
  kSetup,
  kActive,
  kDevice,  // guest paused, sending the rest
  kCompleted,
  kFailed,
  kCancelling,
  kCancelled,
};

// QEMU's spelling: "none", "setup", "active", "device", "completed", ...
std::string_view StateName(MigrationState s);
// Bytes for people: "512 B", "1.50 MiB", "4.00 GiB" (binary units, two decimals).
std::string FormatBytes(double bytes);
inline bool IsTerminal(MigrationState s) {
  return s == MigrationState::kCompleted || s == MigrationState::kFailed || s == MigrationState::kCancelled;
}

struct RamStats {
  uint64_t total = 0;             // bytes of guest RAM
  uint64_t transferred = 0;       // bytes put on (or taken off) the wire
  uint64_t remaining = 0;         // dirty bytes still to send
  uint64_t duplicate = 0;         // zero pages
  uint64_t normal = 0;            // full pages
  uint64_t normal_bytes = 0;
  uint64_t dirty_sync_count = 0;
  uint64_t dirty_pages_rate = 0;  // pages/s dirtied in the last round
  double mbps = 0;                // megabits/s over the migration so far
  uint64_t pages_per_second = 0;
};

// A value in a transport's report (its --json object): a boolean, an
// unsigned number, a double, a string, an array or an object (members in
// the order set). Built without a JSON library, so this header stays free of
// one; the CLI turns it into JSON.
class StatsValue {
 public:
  enum class Kind { kBool, kUint, kDouble, kString, kArray, kObject };

  StatsValue() : kind_(Kind::kObject) {}
  StatsValue(bool b) : kind_(Kind::kBool), bool_(b) {}
  StatsValue(uint64_t u) : kind_(Kind::kUint), uint_(u) {}
  StatsValue(double d) : kind_(Kind::kDouble), double_(d) {}
  StatsValue(std::string s) : kind_(Kind::kString), string_(std::move(s)) {}
  StatsValue(const char* s) : StatsValue(std::string(s)) {}
  static StatsValue Object() { return StatsValue(); }
  // An object with these members, in this order.
  static StatsValue Object(std::initializer_list<std::pair<std::string_view, StatsValue>> members);
  static StatsValue Array() {
    StatsValue v;
    v.kind_ = Kind::kArray;
    return v;
  }

  // Object: sets member `key` (replacing one of that name); returns it.
  StatsValue& Set(std::string_view key, StatsValue v);
  // Array: appends.
  void Push(StatsValue v) { items_.push_back(std::move(v)); }

  Kind kind() const { return kind_; }
  bool as_bool() const { return bool_; }
  uint64_t as_uint() const { return uint_; }
  double as_double() const { return double_; }
  const std::string& as_string() const { return string_; }
  // Array items, or object member values (keys()[i] names items()[i]).
  const std::vector<StatsValue>& items() const { return items_; }
  const std::vector<std::string>& keys() const { return keys_; }

 private:
  Kind kind_;
  bool bool_ = false;
  uint64_t uint_ = 0;
  double double_ = 0;
  std::string string_;
  std::vector<StatsValue> items_;
  std::vector<std::string> keys_;
};

// What one transport adds to a migration's report. The CLI prints `json`'s
// members into the --json object and `ram`'s into its "ram" object; summary
// lines (each ending in "\n") go after the first line (`after_state`: what
// happened after the migration, e.g. a file's flush) or after the
// throughput line (`lines`: the transport's own counters).
struct StatsReport {
  StatsValue json = StatsValue::Object();
  StatsValue ram = StatsValue::Object();
  std::string after_state;
  std::string lines;
};

// One transport's counters in a MigrationStats. multifd/, file/ and tls/
// each define theirs (multifd/stats.h, file/stats.h, tls/stats.h); a sink,
// a receiver or a Connection puts a fresh snapshot in with
// MigrationStats::Set. Immutable once made: copies of a MigrationStats
// share it.
class TransportStats {
 public:
  virtual ~TransportStats() = default;
  // Unique within one MigrationStats ("multifd", "file-threads", "tls").
  virtual std::string_view name() const = 0;
  // Adds its part of the report (--json members, summary lines).
  virtual void Report(StatsReport& out) const = 0;
};

struct MigrationStats {
  MigrationState state = MigrationState::kNone;
  uint64_t total_time_ms = 0;
  uint64_t setup_time_ms = 0;
  uint64_t downtime_ms = 0;
  uint64_t expected_downtime_ms = 0;
  uint64_t iteration = 0;  // dirty rounds so far
  // Source: passes in a row in which the remaining dirty memory did not
  // shrink (by a tenth), and whether that has gone on long enough to call
  // the migration "not converging" (see max-stalled-passes).
  uint64_t stalled_passes = 0;
  bool not_converging = false;
  RamStats ram;
  // The transports' counters (multifd's channels, mapped-ram's file
  // threads, a file's flush time, TLS sessions), in the order they were set.
  std::vector<std::shared_ptr<const TransportStats>> transports;
  std::string error;     // set when failed/cancelled
  bool verified = false; // destination: digest matched; source: destination said so

  // Puts a transport's counters in, replacing any of the same name.
  void Set(std::shared_ptr<const TransportStats> t);
  // Sets `t` unless counters of that name are there already.
  void SetIfAbsent(std::shared_ptr<const TransportStats> t);
  const TransportStats* Find(std::string_view name) const;
  // The counters of type T (multifd::MultifdStats, ...), or null.
  template <class T>
  const T* Get() const {
    for (const auto& t : transports) {
      if (const T* p = dynamic_cast<const T*>(t.get())) return p;
    }
    return nullptr;
  }
};

// The base of a transport's counters T, which names itself with
// `static constexpr std::string_view kName`:
//
//   class MultifdStats final : public TransportStatsOf<MultifdStats> {
//    public:
//     static constexpr std::string_view kName = "multifd";
//     void Report(StatsReport& out) const override;
//     uint64_t bytes = 0;
//   };
template <class T>
class TransportStatsOf : public TransportStats {
 public:
  std::string_view name() const override { return T::kName; }
  // The counters in `stats`, or empty ones when there are none.
  static const T& Of(const MigrationStats& stats) {
    static const T none;
    const T* t = stats.Get<T>();
    return t ? *t : none;
  }
};

}  // namespace ferry
