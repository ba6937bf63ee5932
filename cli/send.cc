// ferry send / save: the source side.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>

#include "cli/commands.h"
#include "cli/guest.h"
#include "cli/limits.h"
#include "cli/report.h"
#include "core/dirty_tracker.h"
#include "core/migration.h"
#include "core/uri.h"
#include "transports/transports.h"

namespace ferry::cli {
namespace {

// Whether the stream goes to the same file as stdout (`send fd:1 > f`,
// `save /dev/stdout`): then the summary must not be appended to it.
bool StreamIsStdout(const std::string& text) {
  Result<Uri> uri = ParseUri(text);
  if (!uri.ok()) return false;
  struct stat out, st;
  if (fstat(STDOUT_FILENO, &out) != 0) return false;
  if (uri->kind == Uri::Kind::kFd) {
    return uri->fd == STDOUT_FILENO ||
           (fstat(uri->fd, &st) == 0 && st.st_dev == out.st_dev && st.st_ino == out.st_ino);
  }
  if (uri->kind == Uri::Kind::kFile) {
    return stat(uri->path.c_str(), &st) == 0 && st.st_dev == out.st_dev && st.st_ino == out.st_ino;
  }
  return false;
}

}  // namespace

int RunSend(const SendOpts& o) {
  // Parse and validate everything before touching memory or the network.
  MigrationSpec spec = SpecFrom(o);
  spec.connect_timeout = std::chrono::milliseconds(static_cast<int64_t>(o.connect_timeout * 1000));
  Result<MigrationPlan> plan = Plan(Side::kSource, spec);
  if (!plan.ok()) return Fail(plan.status(), kExitUsage);
  Result<uint64_t> dirty_rate = ParseSize(o.dirty_rate);
  if (!dirty_rate.ok()) return Fail(dirty_rate.status().WithContext("--dirty-rate"), kExitUsage);
  Result<uint64_t> hot_set = ParseSize(o.hot_set);
  if (!hot_set.ok()) return Fail(hot_set.status().WithContext("--hot-set"), kExitUsage);
  Result<uint64_t> hot_set_offset = ParseSize(o.hot_set_offset);
  if (!hot_set_offset.ok()) return Fail(hot_set_offset.status().WithContext("--hot-set-offset"), kExitUsage);
  Result<FillSpec> fill = ParseFill(o.fill);
  if (!fill.ok()) return Fail(fill.status(), kExitUsage);
  Result<FillSpec::Layout> layout = ParseLayout(o.layout);
  if (!layout.ok()) return Fail(layout.status(), kExitUsage);
  fill->layout = *layout;
  if (o.thp != "on" && o.thp != "off") {
    return Fail(Status::InvalidArgument("--thp must be on or off, got '" + o.thp + "'"), kExitUsage);
  }
  DirtyTrackerKind kind = DirtyTrackerKind::kBest;
  if (o.tracker == "uffd-wp") kind = DirtyTrackerKind::kUffdWp;
  else if (o.tracker == "bitmap") kind = DirtyTrackerKind::kBitmap;
  else if (o.tracker == "all-once") kind = DirtyTrackerKind::kAllOnce;
  else if (o.tracker != "best") {
    return Fail(Status::InvalidArgument("--dirty-tracker must be best, uffd-wp, bitmap or all-once"), kExitUsage);
  }

  // The guest.
  SyntheticGuest guest;
  if (!o.memory_file.empty()) {
    Result<Mapping> m = Mapping::OpenFile(o.memory_file, /*writable=*/*dirty_rate > 0);
    if (!m.ok()) return Fail(m.status(), kExitUsage);
    // Map the whole image now, as a running guest's memory would be, so the
    // migration does not pay for a million first-touch faults.
    Status pop = m->PopulateData();  // holes stay unpopulated
    if (!pop.ok()) return Fail(pop);
    Status s = guest.Init(std::move(*m));
    if (!s.ok()) return Fail(s, kExitUsage);
    // Nobody in this process writes the file unless --dirty-rate asks; a
    // change made by another process would be caught by verification.
    if (*dirty_rate == 0 && kind == DirtyTrackerKind::kBest) kind = DirtyTrackerKind::kAllOnce;
  } else {
    Result<uint64_t> ram = ParseSize(o.ram.empty() ? "1G" : o.ram);
    if (!ram.ok()) return Fail(ram.status().WithContext("--ram"), kExitUsage);
    if (!o.force) {
      Result<Limit> avail = AvailableMemory();
      if (avail.ok() && (*ram > avail->bytes || avail->bytes - *ram < kSendMargin)) {
        return Fail(Status::InvalidArgument(
                        "--ram " + FormatBytes(*ram) + " (" + std::to_string(*ram) + " bytes) is more than this machine "
                        "can hold: " + avail->source + " is " + FormatBytes(avail->bytes) + " (" +
                        std::to_string(avail->bytes) + " bytes), and ferry needs " + FormatBytes(kSendMargin) +
                        " of it for itself; use --force to try anyway"),
                    kExitUsage);
      }
    }
    Result<Mapping> m = Mapping::Anonymous(*ram, /*huge=*/o.thp == "on");
    if (!m.ok()) return Fail(m.status(), kExitUsage);
    std::atomic<bool> fill_stop{false};
    bool filled = false;
    {
      CancelOnSignal fill_signals;
      fill_signals.SetTarget([&] { fill_stop.store(true); });
      filled = FillMemory(m->data(), m->size(), *fill, o.seed, &fill_stop);
    }
    if (!filled) {
      Note("cancelled while filling the synthetic guest's memory");
      return kExitCancelled;
    }
    Status s = guest.Init(std::move(*m));
    if (!s.ok()) return Fail(s, kExitUsage);
  }
  auto tracker = MakeDirtyTracker(kind, Note);
  if (!tracker.ok()) return Fail(tracker.status());
  const std::string tracker_name((*tracker)->name());
  const bool to_stdout = StreamIsStdout(o.uri);

  // Connects (the main stream first, then multifd's channels: QEMU 7.2 takes
  // the first connection it accepts as the main stream), or creates the
  // file, or waits for a FIFO's reader; a signal stops it.
  CancelOnSignal signals;
  Result<std::unique_ptr<Connection>> conn = plan->OpenSource(signals.token());
  if (!conn.ok()) {
    MigrationStats st;
    st.state = signals.fired() ? MigrationState::kCancelled : MigrationState::kFailed;
    st.error = signals.fired() ? "cancelled before connecting" : conn.status().message();
    st.ram.total = guest.size();
    if (o.json) PrintResult("send", st, true, tracker_name, *plan, to_stdout);
    if (signals.fired()) {
      Note("cancelled before connecting");
      return kExitCancelled;
    }
    return Fail(conn.status());
  }
  MigrationSource source(plan->params(), guest.blocks(), **tracker, &guest, std::vector<DeviceHandler*>{},
                         (*conn)->sink_factory());
  signals.SetTarget([&] { source.Cancel(); });
  guest.StartWriter(*dirty_rate, *hot_set, tracker->get(), o.seed, *hot_set_offset);

  Status result;
  {
    Progress progress([&] { return source.Stats(); }, "send");
    StartMigrationMeter();
    result = source.Run((*conn)->channel(), /*await_confirmation=*/(*conn)->two_way());
  }
  signals.ClearTarget();
  guest.StopWriter();
  MigrationStats st = source.Stats();
  (*conn)->AddStats(st);
  // A save counts only once the data is on stable storage.
  Status finished = (*conn)->Finish(st);
  if (!finished.ok()) result = finished;
  PrintResult("send", st, o.json, tracker_name, *plan, to_stdout);
  if (!result.ok() && result.code() != Code::kCancelled) PrintError(result);
  return ExitCodeFor(st);
}

}  // namespace ferry::cli
