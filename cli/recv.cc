// ferry recv / load: the destination side, one path for every URI (the
// library's plan decides what listening, accepting or opening means).
#include <cstdio>
#include <fstream>

#include "cli/commands.h"
#include "cli/guest.h"
#include "cli/limits.h"
#include "cli/report.h"
#include "core/migration.h"
#include "transports/transports.h"

namespace ferry::cli {
namespace {

Status WriteReadyFile(const std::string& path, std::string_view uri) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << uri << "\n";
    if (!f) return Status::Io("cannot write ready file " + tmp, errno);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) return ErrnoStatus("rename " + tmp);
  return Status::Ok();
}

}  // namespace

int RunRecv(const RecvOpts& o) {
  MigrationSpec spec = SpecFrom(o);
  spec.accept_timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000));
  Result<MigrationPlan> plan = Plan(Side::kDestination, spec);
  if (!plan.ok()) return Fail(plan.status(), kExitUsage);
  DestinationOptions opts = plan->destination_options();
  // What the stream may make this side allocate, checked before anything is.
  Result<Limit> cap = DestinationRamLimit(o.max_ram, o.memory_file);
  if (!cap.ok()) return Fail(cap.status(), kExitUsage);
  opts.max_ram = cap->bytes;
  opts.max_ram_source = cap->source;
  if (o.thp != "on" && o.thp != "off") {
    return Fail(Status::InvalidArgument("--thp must be on or off, got '" + o.thp + "'"), kExitUsage);
  }
  DestinationMemory memory(o.memory_file, o.prealloc, cap->bytes, cap->source);
  memory.set_huge_pages(o.thp == "on");
  RamBlockList blocks;
  if (!o.ram.empty()) {
    Result<uint64_t> ram = ParseSize(o.ram);
    if (!ram.ok()) return Fail(ram.status().WithContext("--ram"), kExitUsage);
    if (*ram > cap->bytes) {
      return Fail(Status::InvalidArgument("--ram " + FormatBytes(*ram) + " (" + std::to_string(*ram) +
                                          " bytes) is more than this destination may allocate: " +
                                          FormatBytes(cap->bytes) + " (" + std::to_string(cap->bytes) + " bytes), " +
                                          cap->source),
                  kExitUsage);
    }
    Result<uint8_t*> host = memory.Allocate("ram", *ram);
    if (!host.ok()) return Fail(host.status(), kExitUsage);
    Status s = blocks.Add("ram", *host, *ram);
    if (!s.ok()) return Fail(s, kExitUsage);
  }

  // Listens and accepts (with multifd: all the connections), or opens the
  // file, or waits for a FIFO's writer; bounded by --timeout, ended by a signal.
  CancelOnSignal signals;
  Result<std::unique_ptr<Connection>> conn =
      plan->OpenDestination(signals.token(), [&](std::string_view where) -> Status {
        if (o.ready_file.empty()) return Status::Ok();
        return WriteReadyFile(o.ready_file, where);
      });
  if (!conn.ok()) {
    MigrationStats st;
    st.state = signals.fired() ? MigrationState::kCancelled : MigrationState::kFailed;
    st.error = signals.fired() ? "cancelled while waiting for the source" : conn.status().message();
    if (o.json) PrintResult("recv", st, true, "", *plan);
    if (signals.fired()) {
      Note("cancelled while waiting for the source");
      return kExitCancelled;
    }
    return Fail(conn.status());
  }
  (*conn)->Apply(opts);
  MigrationDestination dest(opts, blocks, o.ram.empty() ? &memory : nullptr);
  signals.SetTarget([&] { dest.Cancel(); });
  Status result;
  {
    Progress progress([&] { return dest.Stats(); }, "recv");
    StartMigrationMeter();
    result = dest.Run((*conn)->channel());
  }
  signals.ClearTarget();
  MigrationStats st = dest.Stats();
  (*conn)->AddStats(st);
  if (!(*conn)->two_way() && st.state == MigrationState::kCompleted && !result.ok()) {
    st.state = MigrationState::kFailed;
  }
  if (!result.ok()) {
    Status explained = (*conn)->Explain(result);
    if (explained.message() != result.message()) st.error = explained.message();
    result = explained;
  }
  PrintResult("recv", st, o.json, "", *plan);
  if (!result.ok()) PrintError(result);
  if (st.state == MigrationState::kCompleted && opts.expect_verify && !st.verified) return kExitFailed;
  const int rc = ExitCodeFor(st);
  if (rc == kExitOk) memory.Keep();
  return rc;
}

}  // namespace ferry::cli
