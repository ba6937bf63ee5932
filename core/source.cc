#include <poll.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/configuration.h"
#include "core/endian.h"
#include "core/migration.h"
#include "core/ram_saver.h"
#include "core/sigbus.h"
#include "core/stream.h"
#include "core/unpopulated.h"
#include "core/verify.h"
#include "core/wire.h"

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

// Unlimited bandwidth still sends in slices so cancel and progress are seen
// several times a second.
constexpr uint64_t kSliceBytes = 32ull << 20;

// True once `fd` has something to read within `wait_ms` (a ferry destination
// writes nothing before its verdict, so that is the verdict or its close).
// max-bandwidth is enforced per 100 ms window, as QEMU does.
constexpr auto kWindow = std::chrono::milliseconds(100);

uint64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

void WriteSectionHeader(StreamWriter& w, uint8_t type, uint32_t id, const std::string& idstr, uint32_t instance,
                        uint32_t version) {
  w.Put8(type);
  w.PutBe32(id);
  w.PutName(idstr);
  w.PutBe32(instance);
  w.PutBe32(version);
}

void WriteFooter(StreamWriter& w, uint32_t id) {
  w.Put8(wire::kFooter);
  w.PutBe32(id);
}

// "12.5 MiB": for messages.
std::string Mib(uint64_t bytes) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// The same status with `suffix` appended to its message.
Status WithSuffix(const Status& s, const std::string& suffix) {
  const std::string msg = s.message() + suffix;
  switch (s.code()) {
    case Code::kOk: return s;
    case Code::kInvalidArgument: return Status::InvalidArgument(msg);
    case Code::kIo: return Status::Io(msg, s.sys_errno());
    case Code::kProtocol: return Status::Protocol(msg);
    case Code::kMismatch: return Status::Mismatch(msg);
    case Code::kCancelled: return Status::Cancelled(msg);
    case Code::kTimeout: return Status::Timeout(msg);
    case Code::kUnsupported: return Status::Unsupported(msg);
    case Code::kClosed: return Status::Closed(msg);
    case Code::kInternal: return Status::Internal(msg);
  }
  return Status::Internal(msg);
}

// A pass "shrinks" what is left when it ends with less than this share of
// the smallest remainder seen so far (9/10): noise does not count.
constexpr uint64_t kShrinkNum = 9, kShrinkDen = 10;
// The progress line says "not converging" after this many stalled passes
// (or max-stalled-passes, when that is smaller).
constexpr uint64_t kNotConvergingAfter = 3;

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

}  // namespace

MigrationSource::MigrationSource(MigrationParams params, RamBlockList& blocks, DirtyTracker& tracker,
                                 GuestControl* guest, std::vector<DeviceHandler*> devices,
                                 PageSinkFactory* sink_factory)
    : params_(std::move(params)),
      blocks_(blocks),
      tracker_(tracker),
      guest_(guest),
      devices_(std::move(devices)),
      sink_factory_(sink_factory) {
  stats_.ram.total = blocks_.total_bytes();
}

MigrationSource::~MigrationSource() = default;

void MigrationSource::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  if (IsTerminal(stats_.state)) return;
  cancel_.store(true, std::memory_order_release);
  if (stats_.state != MigrationState::kNone) stats_.state = MigrationState::kCancelling;
  if (channel_) channel_->Shutdown();
  if (sink_) sink_->Abort();
  cv_.notify_all();
}

MigrationStats MigrationSource::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  MigrationStats s = stats_;
  if (!IsTerminal(s.state) && s.state != MigrationState::kNone) s.total_time_ms = MsSince(start_);
  if (sink_) sink_->FillStats(s);
  return s;
}

void MigrationSource::Publish(MigrationState state) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stats_.state != MigrationState::kCancelling || IsTerminal(state)) stats_.state = state;
  const uint64_t elapsed = std::max<uint64_t>(1, MsSince(start_));
  stats_.total_time_ms = elapsed;
  stats_.ram.transferred = bytes_sent_;
  stats_.ram.normal = normal_;
  stats_.ram.duplicate = zero_;
  stats_.ram.normal_bytes = normal_ * kPageSize;
  stats_.ram.remaining = remaining_;
  stats_.ram.mbps = static_cast<double>(bytes_sent_) * 8 / 1e6 / (elapsed / 1000.0);
  stats_.ram.pages_per_second = (normal_ + zero_) * 1000 / elapsed;
}

Status MigrationSource::Throttle(uint64_t* budget) {
  if (params_.max_bandwidth == 0) {
    *budget = kSliceBytes;
    return Status::Ok();
  }
  const uint64_t allowance = std::max<uint64_t>(params_.max_bandwidth / 10, kPageSize * 2);
  while (true) {
    auto now = Clock::now();
    if (now - window_start_ >= kWindow) {
      window_start_ = now;
      window_bytes_ = 0;
    }
    if (window_bytes_ < allowance) {
      *budget = std::min(allowance - window_bytes_, kSliceBytes);
      return Status::Ok();
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_until(lock, window_start_ + kWindow, [&] { return cancelled(); });
    if (cancelled()) return Status::Cancelled("migration cancelled");
  }
}

Status MigrationSource::Run(Channel& channel, bool await_confirmation) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stats_.state != MigrationState::kNone) return Status::Internal("a MigrationSource runs once");
    if (cancelled()) {
      stats_.state = MigrationState::kCancelled;
      stats_.error = "migration cancelled";
      return Status::Cancelled("migration cancelled before it started");
    }
    channel_ = &channel;
    start_ = Clock::now();
    stats_.state = MigrationState::kSetup;
  }
  // Every wait on this channel (and, through the sink, on the multifd
  // channels, which share the clock) is bounded by no-progress-timeout.
  channel.SetProgressBound(ProgressBound::Make(params_.no_progress_timeout()));
  Status s = RunInner(channel, await_confirmation);
  if (!s.ok() && !cancelled() && await_confirmation && !params_.qemu_compat &&
      (s.code() == Code::kIo || s.code() == Code::kClosed || s.code() == Code::kProtocol) &&
      channel.WaitReadable(2000)) {
    // A destination that failed sends its reason before it closes: a broken
    // pipe here is only the symptom.
    if (Status why = ReadVerdict(channel); !why.ok() && why.code() == Code::kMismatch) s = why;
  }
  if (!s.ok() && !cancelled()) {
    // EFAULT from a kernel copy out of a truncated memory file: say why.
    if (Status m = CheckMappedFiles(blocks_); !m.ok()) s = m;
  }
  tracker_.Stop();
  std::lock_guard<std::mutex> lock(mu_);
  channel_ = nullptr;
  stats_.total_time_ms = MsSince(start_);
  if (s.ok()) {
    stats_.state = MigrationState::kCompleted;
    stats_.ram.remaining = 0;
  } else if (cancelled()) {
    stats_.state = MigrationState::kCancelled;
    s = Status::Cancelled("migration cancelled");
    stats_.error = s.message();
  } else {
    stats_.state = MigrationState::kFailed;
    stats_.error = s.message();
  }
  return s;
}

Status MigrationSource::RunInner(Channel& channel, bool await_confirmation) {
  StreamWriter w(&channel);
  std::unique_ptr<PageSink> sink;
  bool saver_zero = true;
  if (sink_factory_) {
    FERRY_ASSIGN_OR_RETURN(sink, sink_factory_->Make(w));
    saver_zero = sink_factory_->saver_detects_zero();
  } else {
    sink = std::make_unique<StreamSink>(w);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    sink_ = sink.get();
    if (cancelled()) sink_->Abort();
  }
  struct SinkReset {
    MigrationSource* self;
    ~SinkReset() {
      std::lock_guard<std::mutex> lock(self->mu_);
      // Keep the sink's final counters (multifd channels, worker zeros): after
      // this, Stats() has no sink to ask.
      if (self->sink_) self->sink_->FillStats(self->stats_);
      self->sink_ = nullptr;
    }
  } sink_reset{this};
  RamSaver saver(blocks_, w, *sink, saver_zero);
  saver.SetRunRecords(!params_.qemu_compat);
  const bool verify = params_.verify && !params_.qemu_compat;

  // Never-populated memory is found before tracking starts (the uffd-wp
  // tracker's markers hide it afterwards) and confirmed right after: what
  // the guest populated in between loses its bit; later writes are the
  // tracker's to report. Tracking starts before the first page is read, so
  // no write is missed.
  UnpopulatedFinder unpopulated;
  unpopulated.Begin(blocks_);
  FERRY_RETURN_IF_ERROR(tracker_.Start(blocks_).WithContext("dirty tracking (" + std::string(tracker_.name()) + ")"));
  unpopulated.Confirm(blocks_, tracker_.name() == "uffd-wp");
  saver.MarkAllDirty();
  uint64_t syncs = 1;

  w.PutBe32(wire::kMagic);
  w.PutBe32(wire::kVersion);
  Configuration config = ConfigurationFor(params_);
  if (sink_factory_) {
    for (std::string& c : sink_factory_->announced_capabilities()) {
      if (std::find(config.capabilities.begin(), config.capabilities.end(), c) == config.capabilities.end()) {
        config.capabilities.push_back(std::move(c));
      }
    }
  }
  WriteConfiguration(w, config);
  const bool qemu_return_path = params_.qemu_compat && await_confirmation;
  if (qemu_return_path) {
    // QEMU answers on the same connection from now on; its SHUT at the end
    // is the confirmation that it loaded everything.
    w.Put8(wire::kCommand);
    w.PutBe16(static_cast<uint16_t>(wire::Command::kOpenReturnPath));
    w.PutBe16(0);
  }

  // Section ids start at 1: QEMU's loader matches PART/END sections against
  // ids it recorded, and every section it has not seen yet reads as id 0.
  uint32_t next_id = 1;
  const uint32_t ram_id = next_id++;
  WriteSectionHeader(w, wire::kSectionStart, ram_id, "ram", 0, wire::kRamSectionVersion);
  saver.BeginSection();
  FERRY_RETURN_IF_ERROR(saver.WriteSetup());
  FERRY_RETURN_IF_ERROR(saver.EndSetupSection());
  WriteFooter(w, ram_id);
  FERRY_RETURN_IF_ERROR(w.Flush());
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.setup_time_ms = MsSince(start_);
    stats_.ram.dirty_sync_count = syncs;
  }
  remaining_ = saver.dirty_pages() * kPageSize;
  window_start_ = Clock::now();
  Publish(MigrationState::kActive);

  // Dirty rounds until the rest fits in the downtime limit, or until the
  // rest has stopped shrinking for max-stalled-passes passes.
  uint64_t iteration = 0;
  uint64_t best_remaining = UINT64_MAX;  // smallest remainder after a pass that shrank it
  uint64_t stalled = 0;                  // passes since then
  while (true) {
    ++iteration;
    const auto round_start = Clock::now();
    const uint64_t round_bytes0 = saver.bytes();
    saver.StartRound();
    bool done = false;
    while (!done) {
      if (cancelled()) return Status::Cancelled("migration cancelled");
      uint64_t budget = 0;
      FERRY_RETURN_IF_ERROR(Throttle(&budget));
      const uint64_t before = saver.bytes();
      w.Put8(wire::kSectionPart);
      w.PutBe32(ram_id);
      saver.BeginSection();
      done = saver.SendSome(budget);
      FERRY_RETURN_IF_ERROR(w.status());
      FERRY_RETURN_IF_ERROR(saver.EndIterateSection(done));
      WriteFooter(w, ram_id);
      FERRY_RETURN_IF_ERROR(w.Flush().WithContext("sending RAM to " + channel.Describe()));
      if (await_confirmation && !params_.qemu_compat && channel.WaitReadable(0)) {
        // The destination answered before the end of the stream: it failed.
        FERRY_RETURN_IF_ERROR(ReadVerdict(channel));
        return Status::Protocol("the destination confirmed a migration that was not finished");
      }
      window_bytes_ += saver.bytes() - before;
      bytes_sent_ = saver.bytes();
      normal_ = saver.counters().normal_pages;
      zero_ = saver.counters().zero_pages;
      remaining_ = saver.dirty_pages() * kPageSize;
      Publish(MigrationState::kActive);
      FERRY_RETURN_IF_ERROR(CheckMappedFiles(blocks_));  // a memory file truncated under us
    }
    const double round_ms = std::max(1.0, std::chrono::duration<double, std::milli>(Clock::now() - round_start).count());
    const double bytes_per_ms = std::max(1.0, (saver.bytes() - round_bytes0) / round_ms);

    FERRY_ASSIGN_OR_RETURN(uint64_t newly, tracker_.Sync(blocks_));
    ++syncs;
    remaining_ = saver.dirty_pages() * kPageSize;
    const uint64_t expected_ms = static_cast<uint64_t>(remaining_ / bytes_per_ms);
    const bool converged = expected_ms <= params_.downtime_limit_ms;
    if (remaining_ < best_remaining / kShrinkDen * kShrinkNum || best_remaining == UINT64_MAX) {
      best_remaining = remaining_;
      stalled = 0;
    } else {
      ++stalled;
    }
    const uint64_t give_up = params_.max_stalled_passes;
    const bool not_converging =
        !converged && stalled >= (give_up ? std::min(give_up, kNotConvergingAfter) : kNotConvergingAfter);
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.ram.dirty_sync_count = syncs;
      stats_.ram.dirty_pages_rate = static_cast<uint64_t>(newly * 1000 / round_ms);
      stats_.expected_downtime_ms = expected_ms;
      stats_.iteration = iteration;
      stats_.stalled_passes = stalled;
      stats_.not_converging = not_converging;
    }
    Publish(MigrationState::kActive);
    if (converged) break;
    if (give_up != 0 && stalled >= give_up) {
      if (params_.on_stall == MigrationParams::OnStall::kSwitchover) break;  // as the user chose
      const uint64_t dirty_rate = static_cast<uint64_t>(newly * kPageSize * 1000 / round_ms);
      const uint64_t bandwidth = static_cast<uint64_t>(bytes_per_ms * 1000);
      return Status::Timeout(
          "not converging: the remaining dirty memory (" + Mib(remaining_) + ") has not shrunk for " +
          std::to_string(stalled) + " passes (max-stalled-passes); the guest dirties " + Mib(dirty_rate) +
          "/s and the last pass moved " + Mib(bandwidth) + "/s, so the rest needs ~" + std::to_string(expected_ms) +
          " ms of downtime (downtime-limit " + std::to_string(params_.downtime_limit_ms) +
          " ms). The guest keeps running on the source. Raise downtime-limit or max-bandwidth, or choose "
          "-p on-stall=switchover");
    }
  }

  // Switchover: stop the guest, send what is left and the device state,
  // wait for the destination's confirmation. While the guest is paused,
  // every failure (a timeout included: every wait is bounded) resumes the
  // guest first; only then does the error leave this function.
  if (cancelled()) return Status::Cancelled("migration cancelled");
  const auto pause_start = Clock::now();
  if (guest_) guest_->Pause();
  Publish(MigrationState::kDevice);
  bool unconfirmed = false;  // everything was sent, but the confirmation did not come
  Status paused = [&]() -> Status {
    FERRY_ASSIGN_OR_RETURN(uint64_t last, tracker_.Sync(blocks_));
    (void)last;
    ++syncs;
    saver.StartRound();
    w.Put8(wire::kSectionEnd);
    w.PutBe32(ram_id);
    saver.BeginSection();
    while (!saver.SendSome(kSliceBytes)) {
      FERRY_RETURN_IF_ERROR(w.status());
      if (cancelled()) return Status::Cancelled("migration cancelled");
    }
    FERRY_RETURN_IF_ERROR(saver.EndCompleteSection());
    WriteFooter(w, ram_id);

    std::string vmdesc = "{\"page_size\": 4096, \"devices\": [{\"name\": \"ram\", \"instance_id\": 0}";
    for (DeviceHandler* d : devices_) {
      const uint32_t id = next_id++;
      WriteSectionHeader(w, wire::kSectionFull, id, d->idstr(), d->instance_id(), d->version());
      FERRY_RETURN_IF_ERROR(d->Save(w).WithContext("saving device '" + d->idstr() + "'"));
      WriteFooter(w, id);
      vmdesc += ", {\"name\": \"" + JsonEscape(d->idstr()) + "\", \"instance_id\": " +
                std::to_string(d->instance_id()) + "}";
    }
    FERRY_RETURN_IF_ERROR(w.Flush().WithContext("sending the final RAM to " + channel.Describe()));
    const uint64_t downtime = MsSince(pause_start);

    if (verify) {
      const uint32_t id = next_id++;
      WriteSectionHeader(w, wire::kSectionFull, id, wire::kVerifyIdstr, 0, wire::kVerifyVersion);
      WriteVerifyPayload(w, blocks_);
      WriteFooter(w, id);
    }
    vmdesc += "]}";
    // Every page has been read: a memory file that shrank meanwhile gave zeros
    // for some of them, and the stream must not end as if it were complete.
    FERRY_RETURN_IF_ERROR(CheckMappedFiles(blocks_));
    w.Put8(wire::kSectionEof);
    w.Put8(wire::kVmDescription);
    w.PutBe32(static_cast<uint32_t>(vmdesc.size()));
    w.PutBytes(vmdesc.data(), vmdesc.size());
    FERRY_RETURN_IF_ERROR(w.Flush().WithContext("finishing the stream to " + channel.Describe()));
    bytes_sent_ = saver.bytes();
    normal_ = saver.counters().normal_pages;
    zero_ = saver.counters().zero_pages;
    remaining_ = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.downtime_ms = downtime;
      stats_.ram.dirty_sync_count = syncs;
    }
    Publish(MigrationState::kDevice);

    if (qemu_return_path) FERRY_RETURN_IF_ERROR(AwaitQemuShut(channel, &unconfirmed));
    if (await_confirmation && !params_.qemu_compat) {
      // The destination answers once it has loaded (and, with verify, checked)
      // everything: with verify off too, its "completed" is the only success.
      if (Status v = ReadVerdict(channel); !v.ok()) {
        unconfirmed = v.code() != Code::kMismatch && v.code() != Code::kProtocol;
        return v;
      }
      // Hand the guest over: from here on it lives on the destination.
      uint8_t commit[4];
      StoreBe32(commit, wire::kCommitMagic);
      FERRY_RETURN_IF_ERROR(channel.WriteAll(commit, sizeof(commit))
                                .WithContext("confirming the switchover to the destination"));
      std::lock_guard<std::mutex> lock(mu_);
      stats_.verified = verify;
    }
    return Status::Ok();
  }();
  if (!paused.ok()) {
    if (guest_) guest_->Resume();
    if (paused.code() == Code::kCancelled || cancelled()) return paused;
    Status s = unconfirmed ? paused : paused.WithContext("switchover failed");
    if (!guest_) return s;
    return WithSuffix(s, unconfirmed ? "; the guest was resumed and keeps running on the source (the whole stream "
                                       "was sent: do not start the guest on the destination)"
                                     : "; the guest was resumed and keeps running on the source");
  }
  // The guest now lives on the destination: it stays paused here.
  return Status::Ok();
}

Status MigrationSource::ReadVerdict(Channel& channel) {
  uint8_t hdr[12];
  // The first 4 bytes alone first: a TLS destination's alert (7 bytes,
  // 15 03 ...) to a source without TLS is recognised.
  Status rs = channel.ReadExact(hdr, 4);
  if (rs.ok()) {
    if (hdr[0] == 0x15 && hdr[1] == 0x03) {
      return Status::Mismatch("the destination answered with a TLS alert: it uses TLS and this source does not "
                              "(give it --tls-creds too)");
    }
    rs = channel.ReadExact(hdr + 4, sizeof(hdr) - 4);
  }
  if (!rs.ok()) {
    if (rs.code() == Code::kTimeout || rs.code() == Code::kCancelled) {
      return rs.WithContext("the destination did not confirm the migration");
    }
    return Status::Closed("the destination closed the connection without confirming the migration (" + rs.message() +
                          ")");
  }
  if (LoadBe32(hdr) != wire::kVerdictMagic) {
    return Status::Protocol("the destination's reply is not a ferry verdict");
  }
  const uint32_t code = LoadBe32(hdr + 4);
  const uint32_t len = std::min<uint32_t>(LoadBe32(hdr + 8), 64 * 1024);
  std::string msg(len, '\0');
  FERRY_RETURN_IF_ERROR(channel.ReadExact(msg.data(), len));
  if (code != 0) return Status::Mismatch("the destination reports: " + msg);
  return Status::Ok();
}

Status MigrationSource::AwaitQemuShut(Channel& channel, bool* unconfirmed) {
  while (true) {
    uint8_t hdr[4];
    Status rs = channel.ReadExact(hdr, sizeof(hdr));
    if (!rs.ok()) {
      *unconfirmed = true;
      if (rs.code() == Code::kTimeout || rs.code() == Code::kCancelled) {
        return rs.WithContext("QEMU did not confirm that it loaded the migration");
      }
      return Status::Closed("QEMU closed the connection without confirming that it loaded the migration (" +
                            rs.message() + "); see QEMU's own error output");
    }
    const uint16_t type = LoadBe16(hdr), len = LoadBe16(hdr + 2);
    uint8_t data[512];
    if (len > sizeof(data)) {
      return Status::Protocol("QEMU's return path sent message " + std::to_string(type) + " of " +
                              std::to_string(len) + " bytes");
    }
    FERRY_RETURN_IF_ERROR(channel.ReadExact(data, len).WithContext("reading QEMU's return path"));
    if (type == wire::kRpShut) {
      if (len != 4) return Status::Protocol("QEMU's SHUT message has " + std::to_string(len) + " bytes");
      const uint32_t v = LoadBe32(data);
      if (v != 0) {
        return Status::Mismatch("QEMU reports that loading the migration failed (SHUT " +
                                std::to_string(v) + "); see QEMU's own error output");
      }
      return Status::Ok();
    }
    if (type != wire::kRpPong && type != wire::kRpSwitchoverAck) {
      return Status::Protocol("unexpected message " + std::to_string(type) + " on QEMU's return path");
    }
  }
}

}  // namespace ferry
