// What every ferry subcommand shares: exit codes, messages, the result
// printout, cancelling on SIGINT/SIGTERM, and the options every migration
// command takes (turned into a MigrationSpec for the library's Plan).
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/setup.h"
#include "core/stats.h"
#include "core/status.h"

namespace ferry::cli {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitCancelled = 3;

// Messages may quote names and bytes from a stream: escaped for the terminal.
void Note(std::string_view line);
void PrintError(const Status& s);
int Fail(const Status& s, int code = kExitFailed);
int ExitCodeFor(const MigrationStats& st);

// --json (one object) or the summary. `to_stderr`: stdout carries the
// migration stream (send fd:1). The plan adds the counters its transports
// report even when nothing was counted (MigrationPlan::AddStats).
void PrintResult(const std::string& role, const MigrationStats& st, bool json, const std::string& tracker,
                 const MigrationPlan& plan, bool to_stderr = false);

// What the migration phase of this process costs (--json "resources", the
// summary's "host:" line): call right before the migration runs.
void StartMigrationMeter();

// Blocks SIGINT/SIGTERM in every thread (call before any thread starts):
// CancelOnSignal takes them.
void BlockTermSignals();

// While alive, SIGINT or SIGTERM requests stop on token() and runs the
// current target (set once the thing to cancel exists; run at once when the
// signal came before).
class CancelOnSignal {
 public:
  CancelOnSignal();
  ~CancelOnSignal();
  CancelOnSignal(const CancelOnSignal&) = delete;
  CancelOnSignal& operator=(const CancelOnSignal&) = delete;

  std::stop_token token() const { return stop_.get_token(); }
  bool fired() const { return fired_.load(); }
  void SetTarget(std::function<void()> cancel);
  void ClearTarget() { SetTarget(nullptr); }

 private:
  std::stop_source stop_;
  std::mutex mu_;
  std::function<void()> target_;  // guarded by mu_
  std::atomic<bool> done_{false};
  std::atomic<bool> fired_{false};
  std::thread thread_;
};

// Options of send/save and recv/load that describe the migration itself.
struct CommonOpts {
  std::string uri;
  std::string ram;
  std::string memory_file;
  std::string qemu_compat;
  std::vector<std::string> params;  // -p NAME=VALUE
  std::vector<std::string> caps;    // -c NAME=on|off
  std::string uuid;                 // --uuid: the destination's uuid (multifd init packets)
  std::string tls_creds;            // --tls-creds: the tls-creds parameter (tls/)
  // --thp: MADV_HUGEPAGE on the synthetic guest's (send) or the destination's
  // (recv) anonymous RAM. Measured on this project's VMs (issue 13,
  // docs/design-notes.md): a 2 MiB THP fault on memory the host had taken
  // back costs 2-5 ms, 4-8x more per byte than 4 KiB faults (about 1 us);
  // the source's migration faults are the same either way (uffd-wp splits a
  // THP at its first write), and with --layout pages THP populates the
  // untouched pages too. Off.
  std::string thp = "off";
  bool json = false;
};

MigrationSpec SpecFrom(const CommonOpts& o);

}  // namespace ferry::cli
