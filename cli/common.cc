#include "cli/common.h"

#include <pthread.h>
#include <signal.h>

#include <iostream>
#include <optional>

#include "cli/report.h"
#include "core/thread_name.h"

namespace ferry::cli {

void Note(std::string_view line) { std::cerr << "ferry: " << TerminalText(line) << "\n"; }

void PrintError(const Status& s) { std::cerr << "ferry: error: " << TerminalText(s.message()) << "\n"; }

int Fail(const Status& s, int code) {
  PrintError(s);
  return code;
}

int ExitCodeFor(const MigrationStats& st) {
  if (st.state == MigrationState::kCompleted) return kExitOk;
  if (st.state == MigrationState::kCancelled) return kExitCancelled;
  return kExitFailed;
}

namespace {
// Started right before the migration runs (one migration per process).
std::optional<ResourceMeter> g_migration_meter;
}  // namespace

void StartMigrationMeter() { g_migration_meter.emplace(); }

void PrintResult(const std::string& role, const MigrationStats& stats, bool json, const std::string& tracker,
                 const MigrationPlan& plan, bool to_stderr) {
  std::ostream& out = to_stderr ? std::cerr : std::cout;
  MigrationStats st = stats;
  plan.AddStats(st);
  if (json) {
    nlohmann::json j = StatsJson(st);
    if (!tracker.empty()) j["dirty-tracker"] = tracker;
    if (g_migration_meter) j["resources"] = ResourcesJson(g_migration_meter->Read());
    out << DumpJson(j) << std::endl;
  } else {
    std::string text = Summary(role, st, tracker);
    if (g_migration_meter) text += ResourcesLine(g_migration_meter->Read(), st.ram.total);
    out << text << std::flush;
  }
}

void BlockTermSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

CancelOnSignal::CancelOnSignal() {
  thread_ = std::thread([this] {
    SetThreadName("signals");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    timespec ts{0, 100 * 1000 * 1000};
    while (!done_.load()) {
      int sig = sigtimedwait(&set, nullptr, &ts);
      if (sig == SIGINT || sig == SIGTERM) {
        fired_.store(true);
        stop_.request_stop();
        std::lock_guard<std::mutex> lock(mu_);
        if (target_) target_();
      }
    }
  });
}

CancelOnSignal::~CancelOnSignal() {
  done_.store(true);
  thread_.join();
}

void CancelOnSignal::SetTarget(std::function<void()> cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  target_ = std::move(cancel);
  if (target_ && fired_.load()) target_();  // a signal before the target existed
}

MigrationSpec SpecFrom(const CommonOpts& o) {
  MigrationSpec spec;
  spec.uri = o.uri;
  spec.qemu_compat = o.qemu_compat;
  spec.parameters = o.params;
  // --tls-creds is tls/'s tls-creds parameter (after -p: it wins).
  if (!o.tls_creds.empty()) spec.parameters.push_back("tls-creds=" + o.tls_creds);
  spec.capabilities = o.caps;
  spec.uuid = o.uuid;
  spec.note = [](std::string_view line) { Note(line); };
  return spec;
}

}  // namespace ferry::cli
