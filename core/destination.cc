#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <map>

#include "core/configuration.h"
#include "core/endian.h"
#include "core/format.h"
#include "core/sigbus.h"
#include "core/migration.h"
#include "core/stream.h"
#include "core/verify.h"
#include "core/wire.h"

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// Rejects a vmstate subsection where ferry expects none.
Status NoSubsection(StreamReader& r, const std::string& where) {
  if (r.Peek8() == wire::kSubsection) {
    r.Get8();
    std::string name = r.GetName();
    return Status::Unsupported("subsection '" + name + "' in " + where + " is not supported");
  }
  return r.status();
}

// QEMU 7.2's "timer" section (version 2): cpu_ticks_offset, an unused
// 8-byte field, cpu_clock_offset. ferry keeps the values for inspection.
class QemuTimerLoader final : public SectionLoader {
 public:
  std::string idstr() const override { return "timer"; }
  uint32_t version() const override { return 2; }
  Status Load(StreamReader& r, uint32_t version) override {
    ticks_ = r.GetBe64();
    r.Skip(8);
    if (version >= 2) clock_ = r.GetBe64();
    FERRY_RETURN_IF_ERROR(r.status());
    return NoSubsection(r, "section 'timer'");
  }

 private:
  uint64_t ticks_ = 0, clock_ = 0;
};

// QEMU's "globalstate" (version 1): be32 size, 100-byte run state name.
class QemuGlobalStateLoader final : public SectionLoader {
 public:
  std::string idstr() const override { return "globalstate"; }
  uint32_t version() const override { return 1; }
  Status Load(StreamReader& r, uint32_t) override {
    const uint32_t size = r.GetBe32();
    char state[100];
    r.GetBytes(state, sizeof(state));
    FERRY_RETURN_IF_ERROR(r.status());
    if (size > sizeof(state)) return Status::Protocol("globalstate run state length " + std::to_string(size) + " > 100");
    runstate_.assign(state, strnlen(state, std::min<size_t>(size, sizeof(state))));
    return NoSubsection(r, "section 'globalstate'");
  }

 private:
  std::string runstate_;
};

struct OpenSection {
  SectionLoader* loader;
  uint32_t version;
  std::string idstr;
};

}  // namespace

MigrationDestination::MigrationDestination(DestinationOptions options, RamBlockList& blocks,
                                           RamBlockAllocator* allocator, std::vector<SectionLoader*> devices)
    : options_(std::move(options)), blocks_(blocks), allocator_(allocator), devices_(std::move(devices)) {}

MigrationDestination::~MigrationDestination() = default;

void MigrationDestination::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  if (IsTerminal(stats_.state)) return;
  cancel_.store(true, std::memory_order_release);
  if (channel_) channel_->Shutdown();
  if (options_.receiver) options_.receiver->Abort();
}

MigrationStats MigrationDestination::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  MigrationStats s = stats_;
  if (!IsTerminal(s.state) && s.state != MigrationState::kNone) s.total_time_ms = MsSince(start_);
  if (options_.receiver) options_.receiver->FillStats(s);
  return s;
}

void MigrationDestination::UpdateStats(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t elapsed = std::max<uint64_t>(1, MsSince(start_));
  stats_.total_time_ms = elapsed;
  stats_.ram.total = blocks_.total_bytes();
  stats_.ram.transferred = bytes;
  if (ram_) {
    stats_.ram.normal = ram_->counters().normal_pages;
    stats_.ram.duplicate = ram_->counters().zero_pages;
    stats_.ram.normal_bytes = stats_.ram.normal * kPageSize;
    stats_.ram.pages_per_second = (stats_.ram.normal + stats_.ram.duplicate) * 1000 / elapsed;
  }
  stats_.ram.mbps = static_cast<double>(bytes) * 8 / 1e6 / (elapsed / 1000.0);
}

Status MigrationDestination::Run(Channel& channel) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stats_.state != MigrationState::kNone) return Status::Internal("a MigrationDestination runs once");
    channel_ = &channel;
    start_ = Clock::now();
    stats_.state = MigrationState::kActive;
  }
  // Every wait on the main stream and on the multifd channels is bounded by
  // one no-progress clock.
  const ProgressBound bound = ProgressBound::Make(options_.no_progress_timeout);
  channel.SetProgressBound(bound);
  if (options_.receiver) options_.receiver->SetProgressBound(bound);
  Status s = RunInner(channel);
  if (!s.ok() && !cancel_.load(std::memory_order_acquire)) {
    // EFAULT from a read into a truncated memory file: say why.
    if (Status m = CheckMappedFiles(blocks_); !m.ok()) s = m;
    s = ExplainMappedFileFault(blocks_, s);
  }
  if (options_.receiver) {
    if (!s.ok()) options_.receiver->Abort();
    Status fin = options_.receiver->Finish();
    if (s.ok()) s = fin;
    std::lock_guard<std::mutex> lock(mu_);
    // A receiver's failure is the cause; the main stream only stopped for it.
    // A receiver thread cancelled by the Abort above reports no cause.
    if (!receiver_error_.ok() && receiver_error_.code() != Code::kCancelled &&
        !cancel_.load(std::memory_order_acquire)) {
      s = ExplainMappedFileFault(blocks_, receiver_error_);
    }
  }
  if (!s.ok() && cancel_.load(std::memory_order_acquire)) s = Status::Cancelled("incoming migration cancelled");
  if (options_.send_verdict && s.code() != Code::kClosed && s.code() != Code::kCancelled) {
    // Best effort: tell the source how it ended (with verification off too:
    // the source reports success only on this). It reads this only once it
    // has sent everything, so a failure earlier is seen as a closed socket.
    std::string msg = s.ok() ? (options_.expect_verify ? "verified" : "completed") : s.message();
    if (msg.size() > 60000) msg.resize(60000);
    uint8_t hdr[12];
    StoreBe32(hdr, wire::kVerdictMagic);
    StoreBe32(hdr + 4, s.ok() ? 0 : 1);
    StoreBe32(hdr + 8, static_cast<uint32_t>(msg.size()));
    iovec iov[2] = {{hdr, sizeof(hdr)}, {msg.data(), msg.size()}};
    Status sent = channel.WriteAll(std::span<iovec>(iov, 2));
    if (!s.ok() && sent.ok()) DrainAfterFailure(channel);
    if (s.ok()) {
      // Completed only once the source has taken the verdict and let its
      // guest go; a source that gave up resumed its guest and closed.
      uint8_t commit[4] = {};
      Status got = sent.ok() ? channel.ReadExact(commit, sizeof(commit)) : sent;
      if (got.ok() && LoadBe32(commit) != wire::kCommitMagic) {
        got = Status::Protocol("the source answered the verdict with something else than its commit");
      }
      if (!got.ok()) {
        s = Status::Closed("the source did not take over the verdict, so its guest may still be running there (" +
                           got.message() + "); this copy must not be used");
      }
    }
  }
  if (return_path_ && s.code() != Code::kClosed && s.code() != Code::kCancelled) {
    // QEMU's source waits for this before it calls the migration done.
    uint8_t failed[4];
    StoreBe32(failed, s.ok() ? 0 : 1);
    Status shut = SendReturnPath(channel, wire::kRpShut, failed, sizeof(failed));
    if (s.ok() && !shut.ok()) s = shut.WithContext("telling the source on the return path that the load completed");
  }
  std::lock_guard<std::mutex> lock(mu_);
  channel_ = nullptr;
  stats_.total_time_ms = MsSince(start_);
  if (s.ok()) {
    stats_.state = MigrationState::kCompleted;
  } else {
    stats_.state = s.code() == Code::kCancelled ? MigrationState::kCancelled : MigrationState::kFailed;
    stats_.verified = false;  // a copy that must not be used is not "verified", whatever its digest said
    stats_.error = s.message();
  }
  return s;
}

Status MigrationDestination::RunInner(Channel& channel) {
  StreamReader r(&channel);
  ram_ = std::make_unique<RamLoader>(
      blocks_, allocator_, options_.fresh_memory, options_.receiver,
      options_.receiver && options_.receiver->sync_on_eos());
  ram_->SetMaxRam(options_.max_ram, options_.max_ram_source);
  ram_->RecordPageHashes(options_.expect_verify);
  if (options_.receiver) {
    FERRY_RETURN_IF_ERROR(options_.receiver->Start([this](const Status& err) {
      std::lock_guard<std::mutex> lock(mu_);
      if (receiver_error_.ok()) receiver_error_ = err;
      if (channel_) channel_->Shutdown();  // stop reading the main stream
    }));
  }
  VerifyLoader verify(blocks_);
  QemuTimerLoader timer;
  QemuGlobalStateLoader globalstate;

  std::vector<SectionLoader*> loaders = {ram_.get()};
  if (options_.expect_verify) loaders.push_back(&verify);
  if (options_.qemu_devices) {
    loaders.push_back(&timer);
    loaders.push_back(&globalstate);
  }
  for (SectionLoader* d : devices_) loaders.push_back(d);

  // Header.
  const uint32_t magic = r.GetBe32();
  if (!r.status().ok()) return r.status().WithContext("reading the stream header");
  if (magic != wire::kMagic) {
    return Status::Protocol("not a migration stream: bad magic " + Hex(magic) + " (expected 0x5145564d, \"QEVM\")");
  }
  const uint32_t version = r.GetBe32();
  FERRY_RETURN_IF_ERROR(r.status());
  if (version != wire::kVersion) {
    return Status::Protocol("unsupported stream version " + std::to_string(version) + " (ferry reads version 3)");
  }
  const uint8_t first = r.Get8();
  FERRY_RETURN_IF_ERROR(r.status());
  if (first != wire::kConfiguration) {
    return Status::Protocol("configuration section missing: found section type " + Hex(first) + " after the header");
  }
  FERRY_ASSIGN_OR_RETURN(Configuration config, ReadConfiguration(r));
  Configuration local;
  local.machine = options_.machine;
  local.capabilities = options_.capabilities;
  if (options_.receiver) {
    for (std::string& c : options_.receiver->announced_capabilities()) {
      if (std::find(local.capabilities.begin(), local.capabilities.end(), c) == local.capabilities.end()) {
        local.capabilities.push_back(std::move(c));
      }
    }
  }
  local.uuid = options_.uuid;
  FERRY_RETURN_IF_ERROR(CheckConfiguration(config, local, options_.note));

  std::map<uint32_t, OpenSection> open;
  uint64_t sections = 0;
  while (true) {
    if (cancel_.load(std::memory_order_acquire)) return Status::Cancelled("incoming migration cancelled");
    const uint64_t at = r.offset();
    const uint8_t type = r.Get8();
    FERRY_RETURN_IF_ERROR(r.status());
    if (type == wire::kSectionEof) break;
    uint32_t id = 0;
    OpenSection* sec = nullptr;
    switch (type) {
      case wire::kSectionStart:
      case wire::kSectionFull: {
        id = r.GetBe32();
        std::string idstr = r.GetName();
        const uint32_t instance = r.GetBe32();
        const uint32_t ver = r.GetBe32();
        FERRY_RETURN_IF_ERROR(r.status());
        SectionLoader* loader = nullptr;
        for (SectionLoader* l : loaders) {
          if (l->idstr() == idstr && l->instance_id() == instance) loader = l;
        }
        if (!loader) {
          return Status::Protocol("unknown section '" + idstr + "' (instance " + std::to_string(instance) +
                                  ", version " + std::to_string(ver) + "): this destination cannot load it");
        }
        if (ver > loader->version() || ver == 0) {
          return Status::Protocol("section '" + idstr + "' has version " + std::to_string(ver) +
                                  ", this destination supports up to " + std::to_string(loader->version()));
        }
        if (open.count(id)) return Status::Protocol("section id " + std::to_string(id) + " started twice");
        sec = &open[id];
        *sec = OpenSection{loader, ver, idstr};
        break;
      }
      case wire::kSectionPart:
      case wire::kSectionEnd: {
        id = r.GetBe32();
        FERRY_RETURN_IF_ERROR(r.status());
        auto it = open.find(id);
        if (it == open.end()) {
          return Status::Protocol("section part for unknown section id " + std::to_string(id) + " at stream offset " +
                                  std::to_string(at));
        }
        sec = &it->second;
        break;
      }
      case wire::kCommand:
        FERRY_RETURN_IF_ERROR(HandleCommand(r, channel, at));
        continue;
      default:
        return Status::Protocol("unknown section type " + Hex(type) + " at stream offset " + std::to_string(at));
    }
    FERRY_RETURN_IF_ERROR(sec->loader->Load(r, sec->version).WithContext("section '" + sec->idstr + "'"));
    const uint64_t footer_at = r.offset();
    const int footer = r.Peek8();
    FERRY_RETURN_IF_ERROR(r.status().WithContext("section '" + sec->idstr + "' footer"));
    if (footer != wire::kFooter) {
      return Status::Protocol("section '" + sec->idstr + "' (id " + std::to_string(id) +
                              ") is missing its footer: found " +
                              (footer < 0 ? std::string("the end of the stream") : "byte " + Hex(footer)) +
                              " at stream offset " + std::to_string(footer_at));
    }
    r.Get8();
    const uint32_t footer_id = r.GetBe32();
    FERRY_RETURN_IF_ERROR(r.status().WithContext("section '" + sec->idstr + "' footer"));
    if (footer_id != id) {
      return Status::Protocol("section '" + sec->idstr + "' (id " + std::to_string(id) + ") closed by a footer for id " +
                              std::to_string(footer_id));
    }
    if (type == wire::kSectionEnd || type == wire::kSectionFull) open.erase(id);
    if ((++sections & 15) == 0) {
      UpdateStats(r.offset());
      FERRY_RETURN_IF_ERROR(CheckMappedFiles(blocks_));  // a memory file truncated under us
    }
  }

  // Optional VM description after EOF (QEMU always sends one).
  const int next = r.Peek8();
  FERRY_RETURN_IF_ERROR(r.status());
  if (next == wire::kVmDescription) {
    r.Get8();
    const uint32_t n = r.GetBe32();
    FERRY_RETURN_IF_ERROR(r.status());
    if (n > (64u << 20)) return Status::Protocol("VM description of " + std::to_string(n) + " bytes is too large");
    r.Skip(n);
    FERRY_RETURN_IF_ERROR(r.status().WithContext("reading the VM description"));
    if (options_.reject_trailing_bytes) {
      const uint64_t end = r.offset();
      const int more = r.Peek8();
      FERRY_RETURN_IF_ERROR(r.status());
      if (more >= 0) {
        return Status::Protocol("the input goes on after the end of the stream (byte " + Hex(more) +
                                " at stream offset " + std::to_string(end) +
                                ", after the VM description): it is not the single migration stream it claims to be");
      }
    }
  } else if (next >= 0) {
    return Status::Protocol("unexpected byte " + Hex(next) + " after the end of the stream");
  } else if (options_.expect_verify) {
    // A ferry source always closes with its VM description.
    return Status::Protocol("the stream ended without the VM description that follows EOF");
  }
  UpdateStats(r.offset());

  if (!ram_->setup_seen()) return Status::Protocol("the stream ended without a RAM section");
  for (auto& [id, sec] : open) {
    if (sec.loader == ram_.get()) {
      return Status::Protocol("the stream ended before the RAM section was completed (no END section)");
    }
  }
  if (options_.expect_verify && !verify.seen()) {
    return Status::Protocol("the stream has no verification section (is the source QEMU? then use --qemu-compat)");
  }
  FERRY_RETURN_IF_ERROR(CheckMappedFiles(blocks_));
  std::lock_guard<std::mutex> lock(mu_);
  stats_.verified = options_.expect_verify && verify.verified();
  return Status::Ok();
}

void MigrationDestination::DrainAfterFailure(Channel& channel) {
  // Closing with unread bytes would reset the connection and could discard
  // the verdict before the source reads it. Say we are done writing and
  // swallow what the source still sends until it notices (it checks between
  // slices) and closes — for a few seconds at most.
  const int fd = channel.fd();
  if (fd < 0 || ::shutdown(fd, SHUT_WR) != 0) return;
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  std::vector<uint8_t> sink(64 * 1024);
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    const int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (::poll(&p, 1, std::max(left, 1)) <= 0) return;
    Result<size_t> n = channel.ReadSome(sink.data(), sink.size());
    if (!n.ok() || *n == 0) return;
  }
}

Status MigrationDestination::SendReturnPath(Channel& channel, uint16_t type, const void* data, uint16_t len) {
  uint8_t hdr[4];
  StoreBe16(hdr, type);
  StoreBe16(hdr + 2, len);
  iovec iov[2] = {{hdr, sizeof(hdr)}, {const_cast<void*>(data), len}};
  return channel.WriteAll(std::span<iovec>(iov, len ? 2 : 1));
}

Status MigrationDestination::HandleCommand(StreamReader& r, Channel& channel, uint64_t at) {
  using wire::Command;
  const uint16_t cmd = r.GetBe16();
  const uint16_t len = r.GetBe16();
  FERRY_RETURN_IF_ERROR(r.status().WithContext("reading the command section at stream offset " + std::to_string(at)));
  const std::string where = " (command section at stream offset " + std::to_string(at) + ")";
  if (cmd == 0 || cmd >= wire::kCommandCount) {
    return Status::Protocol("unknown command " + std::to_string(cmd) + " with " + std::to_string(len) +
                            " bytes of payload" + where);
  }
  const wire::CommandSpec& spec = wire::kCommands[cmd];
  if (spec.length >= 0 && spec.length != len) {
    return Status::Protocol("command " + std::to_string(cmd) + " (" + spec.name + ") has " + std::to_string(len) +
                            " bytes of payload, expected " + std::to_string(spec.length) + where);
  }
  switch (static_cast<Command>(cmd)) {
    case Command::kOpenReturnPath:
      if (!options_.qemu_devices) {
        return Status::Protocol("the source asked for QEMU's return path" + where +
                                "; a ferry source never does (is the source QEMU? then use --qemu-compat)");
      }
      return_path_ = true;
      // ferry has no device that needs time before the switchover: approve it
      // now (QEMU's switchover-ack capability waits for this; without it the
      // message is ignored). QEMU 7.2 predates the message.
      if (options_.qemu_version != MigrationParams::QemuVersion::k7_2) {
        return SendReturnPath(channel, wire::kRpSwitchoverAck, nullptr, 0)
            .WithContext("answering on the return path");
      }
      return Status::Ok();
    case Command::kPing: {
      const uint32_t value = r.GetBe32();
      FERRY_RETURN_IF_ERROR(r.status());
      if (!return_path_) return Status::Protocol("the source sent PING without opening the return path" + where);
      uint8_t be[4];
      StoreBe32(be, value);
      return SendReturnPath(channel, wire::kRpPong, be, sizeof(be)).WithContext("answering PING on the return path");
    }
    case Command::kSwitchoverStart:
      return Status::Ok();  // the source has paused its guest; nothing to prepare here
    case Command::kEnableColo:
      return Status::Unsupported("the source enabled COLO (x-colo)" + where + ": ferry does not support COLO");
    case Command::kPostcopyAdvise:
    case Command::kPostcopyListen:
    case Command::kPostcopyRun:
    case Command::kPostcopyRamDiscard:
    case Command::kPackaged:
    case Command::kPostcopyResume:
    case Command::kRecvBitmap:
      return Status::Unsupported("the source uses postcopy (command " + std::string(spec.name) + ")" + where +
                                 ": ferry does not support postcopy; turn the postcopy-ram capability off on the "
                                 "source");
    case Command::kInvalid:
      break;
  }
  return Status::Internal("unhandled command " + std::to_string(cmd));
}

}  // namespace ferry
