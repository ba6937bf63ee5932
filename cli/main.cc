// ferry: the command-line tool. See `ferry --help` and docs/cli-contract.md.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "cli/guest.h"
#include "cli/limits.h"
#include "cli/report.h"
#include "core/dirty_tracker.h"
#include "core/migration.h"
#include "core/params.h"
#include "core/uri.h"
#include "file/file_channel.h"
#include "file/inspect.h"
#include "file/mapped_ram.h"
#include "multifd/channels.h"
#include "multifd/multifd.h"
#include "rdma/destination.h"
#include "rdma/source.h"
#include "socket/socket.h"

namespace ferry::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitCancelled = 3;

// Runs `on_signal` (once) when SIGINT or SIGTERM arrives. The signals are
// blocked in every thread (set before any thread starts) and taken here.
class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void()> on_signal) : on_signal_(std::move(on_signal)) {
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "signals");
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGINT);
      sigaddset(&set, SIGTERM);
      timespec ts{0, 100 * 1000 * 1000};
      while (!done_.load()) {
        int sig = sigtimedwait(&set, nullptr, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
          fired_.store(true);
          on_signal_();
        }
      }
    });
  }
  ~SignalWatcher() {
    done_.store(true);
    thread_.join();
  }
  bool fired() const { return fired_.load(); }

 private:
  std::function<void()> on_signal_;
  std::atomic<bool> done_{false};
  std::atomic<bool> fired_{false};
  std::thread thread_;
};

void BlockTermSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

// Messages may quote names and bytes from a stream: escaped for the terminal.
void Note(std::string_view line) { std::cerr << "ferry: " << TerminalText(line) << "\n"; }

void PrintError(const Status& s) { std::cerr << "ferry: error: " << TerminalText(s.message()) << "\n"; }

int Fail(const Status& s, int code = kExitFailed) {
  PrintError(s);
  return code;
}

Status WriteReadyFile(const std::string& path, const std::string& uri) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << uri << "\n";
    if (!f) return Status::Io("cannot write ready file " + tmp, errno);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) return ErrnoStatus("rename " + tmp);
  return Status::Ok();
}

bool IsSocket(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

struct CommonOpts {
  std::string uri;
  std::string ram;
  std::string memory_file;
  std::string qemu_compat;
  std::vector<std::string> params;  // -p NAME=VALUE
  std::vector<std::string> caps;    // -c NAME=on|off
  std::string uuid;                 // --uuid: the destination's uuid (multifd init packets)
  bool json = false;
};

struct SendOpts : CommonOpts {
  std::string fill = "random=50,zero=50";
  uint64_t seed = 1;
  std::string dirty_rate = "0";
  std::string hot_set = "64M";
  double connect_timeout = 30;
  std::string tracker = "best";
  bool force = false;  // --force: a synthetic guest larger than the available memory
};

struct RecvOpts : CommonOpts {
  std::string ready_file;
  bool prealloc = false;
  double timeout = 300;
  std::string max_ram;  // --max-ram
};

// The migration's configuration from --qemu-compat, -p, -c and --uuid,
// validated as a whole. Every failure is a usage error.
struct Config {
  MigrationParams params;
  multifd::Uuid uuid{};  // params.uuid, or all zeros (QEMU without -uuid)
  uint32_t multifd_channels() const { return params.multifd ? params.multifd_channels : 0; }
};

Result<Config> ParseConfig(const CommonOpts& o, const Uri& uri) {
  Config c;
  if (!o.qemu_compat.empty()) FERRY_RETURN_IF_ERROR(c.params.SetQemuCompat(o.qemu_compat));
  for (const std::string& p : o.params) {
    size_t eq = p.find('=');
    if (eq == std::string::npos) return Status::InvalidArgument("-p needs NAME=VALUE, got '" + p + "'");
    FERRY_RETURN_IF_ERROR(c.params.SetParameter(p.substr(0, eq), p.substr(eq + 1)));
  }
  for (const std::string& cap : o.caps) {
    size_t eq = cap.find('=');
    std::string v = eq == std::string::npos ? "" : cap.substr(eq + 1);
    if (v != "on" && v != "off") return Status::InvalidArgument("-c needs CAPABILITY=on|off, got '" + cap + "'");
    FERRY_RETURN_IF_ERROR(c.params.SetCapability(cap.substr(0, eq), v == "on"));
  }
  if (!o.uuid.empty()) {
    Result<Uuid> u = ParseUuid(o.uuid);
    if (!u.ok()) return u.status().WithContext("--uuid");
    c.params.uuid = *u;
    c.uuid = *u;
  }
  FERRY_RETURN_IF_ERROR(c.params.Validate());
  if (uri.kind == Uri::Kind::kFile && IsFifo(uri.path)) {
    if (c.params.mapped_ram) {
      return Status::InvalidArgument("mapped-ram needs a seekable file; " + uri.path + " is a FIFO");
    }
    if (uri.offset != 0) return Status::InvalidArgument(uri.path + " is a FIFO: it has no offsets");
  }
  if (uri.kind == Uri::Kind::kFile) {
    if (c.params.multifd && !c.params.mapped_ram) {
      return Status::InvalidArgument("multifd to a file needs -c mapped-ram=on (then multifd-channels is the "
                                     "number of file threads); a plain stream in a file is written by one thread");
    }
    if (c.params.zero_copy_send) return Status::InvalidArgument("zero-copy-send cannot be used with a file: URI");
  } else if (c.params.mapped_ram) {
    return Status::InvalidArgument("the mapped-ram capability needs a file: URI (or ferry save/load); " + uri.text +
                                   " is not a file");
  }
  if (c.params.multifd && uri.kind == Uri::Kind::kFd) {
    return Status::InvalidArgument("the multifd capability needs a tcp: or unix: URI (it opens " +
                                   std::to_string(c.params.multifd_channels) + " extra connections); " + uri.text +
                                   " is a single descriptor");
  }
  return c;
}

mapped_ram::FileOptions FileOptionsFor(const MigrationParams& p) {
  mapped_ram::FileOptions f;
  f.direct_io = p.direct_io;
  f.channels = p.multifd ? p.multifd_channels : 0;
  f.note = [](std::string_view line) { Note(line); };
  return f;
}

// `to_stderr`: stdout carries the migration stream (send fd:1).
void PrintResult(const std::string& role, const MigrationStats& st, bool json, const std::string& tracker,
                 bool multifd, bool to_stderr = false) {
  std::ostream& out = to_stderr ? std::cerr : std::cout;
  if (json) {
    nlohmann::json j = StatsJson(st, multifd);
    if (!tracker.empty()) j["dirty-tracker"] = tracker;
    out << DumpJson(j) << std::endl;
  } else {
    out << Summary(role, st, tracker) << std::flush;
  }
}

// Whether the stream goes to the same file as stdout (`send fd:1 > f`,
// `save /dev/stdout`): then the summary must not be appended to it.
bool StreamIsStdout(const Uri& uri) {
  struct stat out, st;
  if (fstat(STDOUT_FILENO, &out) != 0) return false;
  if (uri.kind == Uri::Kind::kFd) {
    return uri.fd == STDOUT_FILENO || (fstat(uri.fd, &st) == 0 && st.st_dev == out.st_dev && st.st_ino == out.st_ino);
  }
  if (uri.kind == Uri::Kind::kFile) {
    return stat(uri.path.c_str(), &st) == 0 && st.st_dev == out.st_dev && st.st_ino == out.st_ino;
  }
  return false;
}

int ExitCodeFor(const MigrationStats& st) {
  if (st.state == MigrationState::kCompleted) return kExitOk;
  if (st.state == MigrationState::kCancelled) return kExitCancelled;
  return kExitFailed;
}

int RunSend(const SendOpts& o) {
  // Parse and validate everything before touching memory or the network.
  Result<Uri> uri = ParseUri(o.uri);
  if (!uri.ok()) return Fail(uri.status(), kExitUsage);
  Result<Config> config = ParseConfig(o, *uri);
  if (!config.ok()) return Fail(config.status(), kExitUsage);
  if (uri->kind == Uri::Kind::kRdma && config->params.multifd) {
    return Fail(Status::Unsupported("multifd over rdma: is not implemented yet"), kExitUsage);
  }
  if (uri->kind != Uri::Kind::kRdma && config->params.rdma_pin_all) {
    return Fail(Status::InvalidArgument("capability rdma-pin-all needs an rdma: URI"), kExitUsage);
  }
  const MigrationParams& params = config->params;
  const bool multifd = params.multifd;
  Result<uint64_t> dirty_rate = ParseSize(o.dirty_rate);
  if (!dirty_rate.ok()) return Fail(dirty_rate.status().WithContext("--dirty-rate"), kExitUsage);
  Result<uint64_t> hot_set = ParseSize(o.hot_set);
  if (!hot_set.ok()) return Fail(hot_set.status().WithContext("--hot-set"), kExitUsage);
  Result<FillSpec> fill = ParseFill(o.fill);
  if (!fill.ok()) return Fail(fill.status(), kExitUsage);
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
    Status pop = m->Populate(/*write=*/false);
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
    Result<Mapping> m = Mapping::Anonymous(*ram, /*huge=*/false);
    if (!m.ok()) return Fail(m.status(), kExitUsage);
    std::atomic<bool> fill_stop{false};
    bool filled = false;
    {
      SignalWatcher fill_signals([&] { fill_stop.store(true); });
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

  // The source is built once its connections exist (multifd hands its
  // channels to the sink factory); until then a signal stops the connecting.
  std::unique_ptr<multifd::MultifdSinkFactory> multifd_sinks;
  std::unique_ptr<rdma::RdmaConnection> rdma_conn;  // rdma: (outlives the source and its sink)
  std::unique_ptr<rdma::RdmaSinkFactory> rdma_sinks;
  std::unique_ptr<MigrationSource> source;
  std::mutex source_mu;
  MigrationSource* running = nullptr;  // guarded by source_mu
  std::stop_source stop;
  SignalWatcher signals([&] {
    stop.request_stop();
    std::lock_guard<std::mutex> lock(source_mu);
    if (running) running->Cancel();
  });

  // The main stream first, then the multifd channels: QEMU 7.2 takes the
  // first connection it accepts as the main stream.
  // A FIFO is a one-way stream like a pipe (fd:N), not a file.
  const bool to_fifo = uri->kind == Uri::Kind::kFile && IsFifo(uri->path);
  const bool to_file = uri->kind == Uri::Kind::kFile && !to_fifo;
  const bool report_multifd = multifd && !to_file;
  std::unique_ptr<FileChannel> file;
  std::unique_ptr<mapped_ram::MappedRamSinkFactory> mapped_sinks;
  const auto connect_timeout = std::chrono::milliseconds(static_cast<int64_t>(o.connect_timeout * 1000));
  const auto connect_start = std::chrono::steady_clock::now();
  Result<std::unique_ptr<Channel>> ch = std::unique_ptr<Channel>();
  if (to_fifo) {
    // Waits (bounded by --connect-timeout, ended by a signal) for a reader.
    Result<UniqueFd> fd = OpenFifo(uri->path, /*write=*/true, connect_timeout, stop.get_token());
    if (fd.ok()) {
      ch = MakeFdChannel(std::move(*fd), "fifo:" + uri->path);
    } else {
      ch = fd.status();
    }
  } else if (to_file) {
    Result<std::unique_ptr<FileChannel>> f = CreateFileForSave(uri->path, uri->offset);
    if (f.ok()) {
      file = std::move(*f);
      if (params.mapped_ram) {
        mapped_sinks = std::make_unique<mapped_ram::MappedRamSinkFactory>(*file, FileOptionsFor(params));
      }
    } else {
      ch = f.status();
    }
  } else if (uri->kind == Uri::Kind::kRdma) {
    Result<std::unique_ptr<rdma::RdmaConnection>> c = rdma::RdmaConnection::Connect(*uri, params.rdma_pin_all, connect_timeout, stop.get_token());
    if (c.ok()) {
      rdma_conn = std::move(*c);
      rdma_sinks = std::make_unique<rdma::RdmaSinkFactory>(*rdma_conn);
      ch = std::unique_ptr<Channel>(
          std::make_unique<rdma::RdmaStreamChannel>(*rdma_conn, rdma::RdmaStreamChannel::Side::kSource));
    } else {
      ch = c.status();
    }
  } else {
    ch = Connect(*uri, connect_timeout, stop.get_token());
  }
  Status connected = ch.status();
  if (connected.ok() && multifd && !to_file) {
    auto left = connect_timeout - std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now() - connect_start);
    auto chans = multifd::ConnectMultifd(*uri, params.multifd_channels, config->uuid,
                                         std::max(left, std::chrono::milliseconds(1000)), stop.get_token());
    if (chans.ok()) {
      multifd_sinks = std::make_unique<multifd::MultifdSinkFactory>(params, std::move(*chans));
    } else {
      connected = chans.status();
    }
  }
  if (!connected.ok()) {
    MigrationStats st;
    st.state = signals.fired() ? MigrationState::kCancelled : MigrationState::kFailed;
    st.error = signals.fired() ? "cancelled before connecting" : connected.message();
    st.ram.total = guest.size();
    if (o.json) PrintResult("send", st, true, tracker_name, report_multifd, StreamIsStdout(*uri));
    if (signals.fired()) {
      Note("cancelled before connecting");
      return kExitCancelled;
    }
    return Fail(connected);
  }
  source = std::make_unique<MigrationSource>(params, guest.blocks(), **tracker, &guest,
                                             std::vector<DeviceHandler*>{},
                                             to_file      ? static_cast<PageSinkFactory*>(mapped_sinks.get())
                                             : rdma_sinks ? static_cast<PageSinkFactory*>(rdma_sinks.get())
                                                          : static_cast<PageSinkFactory*>(multifd_sinks.get()));
  {
    std::lock_guard<std::mutex> lock(source_mu);
    running = source.get();
    if (stop.stop_requested()) running->Cancel();  // a signal between connecting and here
  }
  const bool two_way = !to_file && !to_fifo && uri->kind != Uri::Kind::kRdma &&
                       (uri->kind != Uri::Kind::kFd || IsSocket(uri->fd));
  Channel& channel = to_file ? static_cast<Channel&>(*file) : **ch;
  guest.StartWriter(*dirty_rate, *hot_set, tracker->get(), o.seed);

  Status result;
  {
    Progress progress([&] { return source->Stats(); }, "send");
    result = source->Run(channel, /*await_confirmation=*/two_way);
  }
  guest.StopWriter();
  MigrationStats st = source->Stats();
  if (to_file && st.state == MigrationState::kCompleted) {
    // The save counts only once the data is on stable storage.
    const auto sync_start = std::chrono::steady_clock::now();
    Status fin = file->Finish();
    st.file_sync_ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::steady_clock::now() - sync_start)
                                                .count());
    if (!fin.ok()) {
      result = fin.WithContext("flushing " + uri->path);
      st.state = MigrationState::kFailed;
      st.error = result.message();
    }
  }
  PrintResult("send", st, o.json, tracker_name, report_multifd, StreamIsStdout(*uri));
  if (!result.ok() && result.code() != Code::kCancelled) PrintError(result);
  return ExitCodeFor(st);
}

// recv (load) from file:PATH[,offset=N]: one-way, no verdict; the
// verification section is still checked.
int RecvFromFile(const RecvOpts& o, const Uri& uri, const MigrationParams& params, DestinationOptions opts,
                 RamBlockList& blocks, DestinationMemory& memory) {
  opts.send_verdict = false;
  Result<std::unique_ptr<FileChannel>> file = OpenFileForLoad(uri.path, uri.offset);
  if (!file.ok()) {
    MigrationStats st;
    st.state = MigrationState::kFailed;
    st.error = file.status().message();
    if (o.json) PrintResult("recv", st, true, "", false);
    return Fail(file.status());
  }
  std::unique_ptr<PageReceiver> receiver;
  if (params.mapped_ram) {
    mapped_ram::FileOptions fo = FileOptionsFor(params);
    fo.fresh_memory = true;
    receiver = mapped_ram::MakeMappedRamReceiver(**file, std::move(fo));
    opts.receiver = receiver.get();
  }
  MigrationDestination dest(opts, blocks, o.ram.empty() ? &memory : nullptr);
  Status result;
  {
    SignalWatcher signals([&] { dest.Cancel(); });
    Progress progress([&] { return dest.Stats(); }, "recv");
    result = dest.Run(**file);
  }
  MigrationStats st = dest.Stats();
  if (st.state == MigrationState::kCompleted && !result.ok()) st.state = MigrationState::kFailed;
  if (!result.ok() && !params.mapped_ram) {
    // A mapped-ram file read as a plain stream fails on its first header
    // byte with a record-level message; say what the file is.
    Result<InspectReport> layout = InspectFile(uri.path, uri.offset);
    if (layout.ok() && layout->mapped_ram) {
      result = Status::Protocol(result.message() + " (the file has the mapped-ram layout: load it with -c "
                                                        "mapped-ram=on)");
      st.error = result.message();
    }
  }
  PrintResult("recv", st, o.json, "", false);
  if (!result.ok()) PrintError(result);
  if (st.state == MigrationState::kCompleted && opts.expect_verify && !st.verified) return kExitFailed;
  const int rc = ExitCodeFor(st);
  if (rc == kExitOk) memory.Keep();
  return rc;
}

// recv (load) from a FIFO: a one-way stream like fd:N on a pipe. The wait
// for a writer is bounded by --timeout (as a listener's) and ended by
// SIGINT/SIGTERM; after that the channel's no-progress bound applies.
int RecvFromFifo(const RecvOpts& o, const Uri& uri, DestinationOptions opts, RamBlockList& blocks,
                 DestinationMemory& memory) {
  opts.send_verdict = false;
  std::mutex mu;
  MigrationDestination* running = nullptr;  // guarded by mu
  std::stop_source stop;
  SignalWatcher signals([&] {
    stop.request_stop();
    std::lock_guard<std::mutex> lock(mu);
    if (running) running->Cancel();
  });
  Note("reading FIFO " + uri.path + ": waiting for a writer");
  Result<UniqueFd> fd =
      OpenFifo(uri.path, /*write=*/false, std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)),
               stop.get_token());
  if (!fd.ok()) {
    MigrationStats st;
    st.state = signals.fired() ? MigrationState::kCancelled : MigrationState::kFailed;
    st.error = fd.status().message();
    if (o.json) PrintResult("recv", st, true, "", false);
    if (signals.fired()) {
      Note(fd.status().message());
      return kExitCancelled;
    }
    return Fail(fd.status());
  }
  std::unique_ptr<Channel> channel = MakeFdChannel(std::move(*fd), "fifo:" + uri.path);
  MigrationDestination dest(opts, blocks, o.ram.empty() ? &memory : nullptr);
  {
    std::lock_guard<std::mutex> lock(mu);
    running = &dest;
    if (stop.stop_requested()) dest.Cancel();
  }
  Status result;
  {
    Progress progress([&] { return dest.Stats(); }, "recv");
    result = dest.Run(*channel);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    running = nullptr;
  }
  MigrationStats st = dest.Stats();
  if (st.state == MigrationState::kCompleted && !result.ok()) st.state = MigrationState::kFailed;
  PrintResult("recv", st, o.json, "", false);
  if (!result.ok()) std::cerr << "ferry: error: " << result.message() << "\n";
  if (st.state == MigrationState::kCompleted && opts.expect_verify && !st.verified) return kExitFailed;
  return ExitCodeFor(st);
}

// recv over rdma:HOST:PORT (QEMU's RDMA protocol, rdma/): the stream comes
// in QEMU FILE control messages, the pages as RDMA WRITEs into registered
// memory; the RAM loader calls the transport's receiver at each hook record.
int RecvOverRdma(const RecvOpts& o, const Uri& uri, const MigrationParams& params, DestinationOptions opts,
                 RamBlockList& blocks, DestinationMemory& memory) {
  if (params.multifd) return Fail(Status::Unsupported("multifd over rdma: is not implemented yet"), kExitUsage);
  opts.send_verdict = false;  // no return path over rdma
  Result<std::unique_ptr<rdma::RdmaListener>> listener = rdma::RdmaListener::Listen(uri);
  if (!listener.ok()) return Fail(listener.status());
  Note("listening on " + (*listener)->address());
  if (!o.ready_file.empty()) {
    Status s = WriteReadyFile(o.ready_file, (*listener)->address());
    if (!s.ok()) return Fail(s);
  }
  std::unique_ptr<rdma::RdmaConnection> conn;  // outlives the watcher and everything using it
  std::mutex mu;
  MigrationDestination* running = nullptr;  // guarded by mu, like conn once set
  SignalWatcher signals([&] {
    std::lock_guard<std::mutex> lock(mu);
    (*listener)->Shutdown();
    if (conn) conn->Shutdown();
    if (running) running->Cancel();
  });
  Result<std::unique_ptr<rdma::RdmaConnection>> accepted =
      (*listener)->Accept(std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)));
  if (!accepted.ok()) {
    if (signals.fired()) {
      Note("cancelled while waiting for the source");
      return kExitCancelled;
    }
    return Fail(accepted.status());
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    conn = std::move(*accepted);
    if (signals.fired()) conn->Shutdown();
  }
  Note("rdma: connected to " + conn->peer() + (conn->pin_all() ? " (pin-all)" : " (dynamic registration)"));
  rdma::RdmaStreamChannel channel(*conn);
  rdma::RdmaPageReceiver receiver(*conn);
  opts.receiver = &receiver;
  MigrationDestination dest(opts, blocks, o.ram.empty() ? &memory : nullptr);
  {
    std::lock_guard<std::mutex> lock(mu);
    running = &dest;
    if (signals.fired()) dest.Cancel();
  }
  Status result;
  {
    Progress progress([&] { return dest.Stats(); }, "recv");
    result = dest.Run(channel);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    running = nullptr;
  }
  Note(receiver.Summary());
  MigrationStats st = dest.Stats();
  PrintResult("recv", st, o.json, "", false);
  if (!result.ok()) PrintError(result);
  if (st.state == MigrationState::kCompleted && opts.expect_verify && !st.verified) return kExitFailed;
  const int rc = ExitCodeFor(st);
  if (rc == kExitOk) memory.Keep();
  return rc;
}

int RunRecv(const RecvOpts& o) {
  Result<Uri> uri = ParseUri(o.uri);
  if (!uri.ok()) return Fail(uri.status(), kExitUsage);
  Result<Config> config = ParseConfig(o, *uri);
  if (!config.ok()) return Fail(config.status(), kExitUsage);
  const MigrationParams& params = config->params;
  const bool multifd = params.multifd;
  DestinationOptions opts;
  opts.expect_verify = params.verify;
  opts.machine = params.machine;
  opts.mapped_ram = params.mapped_ram;
  opts.uuid = params.uuid;
  opts.note = [](std::string_view line) { Note(line); };
  if (params.qemu_compat) {
    opts.expect_verify = false;
    opts.send_verdict = false;
    opts.qemu_devices = true;
    opts.qemu_version = params.qemu_version;
  }
  // What the stream may make this side allocate, checked before anything is.
  Result<Limit> cap = DestinationRamLimit(o.max_ram, o.memory_file);
  if (!cap.ok()) return Fail(cap.status(), kExitUsage);
  opts.max_ram = cap->bytes;
  opts.max_ram_source = cap->source;
  // A file or a pipe ends with the stream: anything after it is refused.
  struct stat in_st;
  opts.reject_trailing_bytes =
      (uri->kind == Uri::Kind::kFile && stat(uri->path.c_str(), &in_st) == 0 && S_ISREG(in_st.st_mode)) ||
      (uri->kind == Uri::Kind::kFd && !IsSocket(uri->fd));
  DestinationMemory memory(o.memory_file, o.prealloc, cap->bytes, cap->source);
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
  opts.no_progress_timeout = params.no_progress_timeout();
  if (uri->kind == Uri::Kind::kFd && !IsSocket(uri->fd)) opts.send_verdict = false;
  if (uri->kind == Uri::Kind::kFile && IsFifo(uri->path)) return RecvFromFifo(o, *uri, opts, blocks, memory);
  if (uri->kind == Uri::Kind::kFile) return RecvFromFile(o, *uri, params, opts, blocks, memory);
  if (uri->kind == Uri::Kind::kRdma) return RecvOverRdma(o, *uri, params, opts, blocks, memory);

  Result<std::unique_ptr<Listener>> listener = Listener::Listen(*uri);
  if (!listener.ok()) return Fail(listener.status());
  const std::string where = (*listener)->address();
  Note("listening on " + where);
  if (!o.ready_file.empty()) {
    Status s = WriteReadyFile(o.ready_file, where);
    if (!s.ok()) return Fail(s);
  }

  // Declared before the signal watcher so that they outlive it; the
  // destination is built once its connections are known.
  multifd::IncomingChannels incoming;
  std::unique_ptr<PageReceiver> receiver;
  std::unique_ptr<MigrationDestination> dest;
  std::mutex dest_mu;
  MigrationDestination* running = nullptr;  // guarded by dest_mu
  std::stop_source stop;
  SignalWatcher signals([&] {
    stop.request_stop();
    (*listener)->Shutdown();
    std::lock_guard<std::mutex> lock(dest_mu);
    if (running) running->Cancel();
  });

  // Without multifd this accepts the one main connection (and refuses a
  // multifd channel or garbage there, by its first bytes).
  Result<multifd::IncomingChannels> accepted = multifd::AcceptMigrationChannels(
      **listener, config->multifd_channels(), config->uuid,
      std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)), stop.get_token());
  if (!accepted.ok()) {
    MigrationStats st;
    st.state = signals.fired() ? MigrationState::kCancelled : MigrationState::kFailed;
    st.error = signals.fired() ? "cancelled while waiting for the source" : accepted.status().message();
    if (o.json) PrintResult("recv", st, true, "", multifd);
    if (signals.fired()) {
      Note("cancelled while waiting for the source");
      return kExitCancelled;
    }
    return Fail(accepted.status());
  }
  incoming = std::move(*accepted);
  if (multifd) {
    receiver = multifd::MakeMultifdReceiver(params, std::move(incoming.multifd));
    opts.receiver = receiver.get();
    opts.multifd_sync_on_eos = params.multifd_flush_after_each_section;
  }
  dest = std::make_unique<MigrationDestination>(opts, blocks, o.ram.empty() ? &memory : nullptr);
  {
    std::lock_guard<std::mutex> lock(dest_mu);
    running = dest.get();
    if (stop.stop_requested()) running->Cancel();  // a signal between accepting and here
  }
  Status result;
  {
    Progress progress([&] { return dest->Stats(); }, "recv");
    result = dest->Run(*incoming.main);
  }
  MigrationStats st = dest->Stats();
  PrintResult("recv", st, o.json, "", multifd);
  if (!result.ok()) PrintError(result);
  if (st.state == MigrationState::kCompleted && opts.expect_verify && !st.verified) return kExitFailed;
  const int rc = ExitCodeFor(st);
  if (rc == kExitOk) memory.Keep();
  return rc;
}

int RunDemo(const std::string& self, const std::string& ram, const std::string& dirty_rate) {
  char dir_template[] = "/tmp/ferry-demo-XXXXXX";
  if (!mkdtemp(dir_template)) return Fail(ErrnoStatus("mkdtemp"));
  const std::string dir = dir_template;
  const std::string ready = dir + "/ready";
  const std::string recv_out = dir + "/recv.txt";
  std::cout << "ferry demo: a live migration of a " << ram << " guest between two processes on loopback\n"
            << "  destination: " << self << " recv tcp:127.0.0.1:0\n"
            << "  source:      " << self << " send ... --ram " << ram << " --dirty-rate " << dirty_rate
            << " --hot-set 64M\n\n"
            << std::flush;
  pid_t child = fork();
  if (child < 0) return Fail(ErrnoStatus("fork"));
  if (child == 0) {
    int fd = open(recv_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) dup2(fd, STDOUT_FILENO);
    sigset_t set;
    sigemptyset(&set);
    pthread_sigmask(SIG_SETMASK, &set, nullptr);
    execl(self.c_str(), self.c_str(), "recv", "tcp:127.0.0.1:0", "--ready-file", ready.c_str(), "--timeout", "60",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  std::string uri;
  for (int i = 0; i < 600 && uri.empty(); ++i) {
    std::ifstream f(ready);
    if (f) std::getline(f, uri);
    if (uri.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (uri.empty()) {
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    return Fail(Status::Timeout("the destination did not start listening"));
  }
  SendOpts so;
  so.uri = uri;
  so.ram = ram;
  so.dirty_rate = dirty_rate;
  so.hot_set = "64M";
  so.fill = "random=40,zero=40,text=20";
  int rc = RunSend(so);
  int status = 0;
  waitpid(child, &status, 0);
  std::cout << "\n";
  std::ifstream f(recv_out);
  std::cout << f.rdbuf();
  unlink(recv_out.c_str());
  unlink(ready.c_str());
  rmdir(dir.c_str());
  const bool recv_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::cout << "\nferry demo: " << (rc == 0 && recv_ok ? "migration completed and verified" : "migration FAILED")
            << "\n";
  return rc == 0 && recv_ok ? kExitOk : kExitFailed;
}

int RunInspect(const std::string& path, uint64_t offset, bool json) {
  // Opening a FIFO would wait for a writer, with SIGINT blocked: refuse it.
  if (IsFifo(path)) return Fail(Status::InvalidArgument(path + " is a FIFO: inspect walks a saved file"), kExitUsage);
  Result<InspectReport> rep = InspectFile(path, offset);
  if (!rep.ok()) return Fail(rep.status(), kExitUsage);
  const InspectReport& r = *rep;
  std::cout << InspectText(r, json) << std::flush;
  return r.complete() ? kExitOk : kExitFailed;
}

constexpr const char* kParamHelp =
    "QEMU migration parameter NAME=VALUE: downtime-limit (ms, default 300), max-bandwidth (bytes/s, 0 = "
    "unlimited), multifd-channels (1-255, default 2), zero-page-detection (none|legacy|multifd, default "
    "multifd), multifd-compression (none|zstd), multifd-zstd-level (0-20, default 1), "
    "multifd-flush-after-each-section (on|off, default off; on for QEMU 7.2), direct-io (on|off: page data through "
    "O_DIRECT; save reserves the file's page regions up front and frees long zero runs at the end; needs mapped-ram), "
    "no-progress-timeout (seconds any channel may move no byte before the migration fails, both sides, default 30, "
    "0 = forever), max-stalled-passes (passes without the remaining dirty memory shrinking before the source gives "
    "up, default 30, 0 = never), on-stall (fail|switchover: what it then does, default fail)";

void AddSendOptions(CLI::App* s, SendOpts& send) {
  s->add_option("--ram", send.ram, "Size of the synthetic guest's RAM, e.g. 4G (default 1G)");
  s->add_option("--fill", send.fill, "Page mix of the synthetic guest: random=P,zero=P,text=P (percent)")
      ->capture_default_str();
  s->add_option("--seed", send.seed, "Seed of the fill and of the writer")->capture_default_str();
  s->add_option("--dirty-rate", send.dirty_rate,
                "Bytes of pages the guest dirties per second while migrating, e.g. 200M (0 = idle)")
      ->capture_default_str();
  s->add_option("--hot-set", send.hot_set, "Size of the region the guest writes to")->capture_default_str();
  s->add_option("--memory-file", send.memory_file,
                "Migrate this file's contents (mmap MAP_SHARED, e.g. /dev/shm/vm.mem) instead of a synthetic guest");
  s->add_option("-p,--parameter", send.params, kParamHelp);
  s->add_option("-c,--capability", send.caps,
                "Capability NAME=on|off: verify (ferry's digest check, default on), multifd (pages over "
                "multifd-channels extra connections; with mapped-ram: file threads), zero-copy-send (MSG_ZEROCOPY on the "
                "multifd channels; not with compression), mapped-ram (fixed page places in a file; file targets only), "
                "validate-uuid (put --uuid in the stream; the destination refuses another uuid), rdma-pin-all (rdma: "
                "only: ask the destination to register all its RAM at setup instead of 1 MiB chunks on demand)");
  s->add_option("--uuid", send.uuid,
                "The VM's uuid (QEMU's -uuid): put in every multifd channel's init packet and, with validate-uuid, "
                "in the stream (default all zeros)");
  s->add_option("--qemu-compat", send.qemu_compat,
                "MACHINE[,version=7.2|10.0]: the destination is QEMU (default: a current one, 10.0) with machine "
                "type MACHINE (e.g. none): one block 'ram', no ferry extensions; version=7.2 also sets that "
                "generation's multifd behaviour (flush after each section, zero pages in the main stream)");
  s->add_option("--connect-timeout", send.connect_timeout, "Seconds to keep retrying the connection")
      ->capture_default_str();
  s->add_option("--dirty-tracker", send.tracker, "best (default), uffd-wp, bitmap or all-once (guest must be idle)");
  s->add_flag("--force", send.force,
              "Allow a synthetic guest (--ram) larger than the available memory less a margin for ferry itself");
  s->add_flag("--json", send.json, "Print one JSON object (query-migrate fields) instead of the summary");

}

void AddRecvOptions(CLI::App* r, RecvOpts& recv) {
  r->add_option("--ram", recv.ram, "Expected RAM size (default: as the stream announces)");
  r->add_option("--memory-file", recv.memory_file, "Write the received RAM into this file (created or truncated)");
  r->add_option("--qemu-compat", recv.qemu_compat,
                "MACHINE[,version=7.2|10.0]: the source is QEMU (default: a current one, 10.0) with machine type "
                "MACHINE (e.g. none): no verification section expected, QEMU's own device sections and commands "
                "accepted; version=7.2 also sets that generation's multifd behaviour");
  r->add_option("-p,--parameter", recv.params,
                std::string(kParamHelp) + ". The multifd ones must match the source's.");
  r->add_option("-c,--capability", recv.caps,
                "Capability NAME=on|off: verify (require the source's verification section; default on, off with "
                "--qemu-compat), multifd (accept multifd-channels extra connections; must match the source), mapped-ram "
                "(the file has QEMU's mapped-ram layout; must match the source, which says so in the stream), validate-uuid "
                "(accepted; a uuid in the stream is always checked against --uuid)");
  r->add_option("--uuid", recv.uuid,
                "This destination's uuid (QEMU's -uuid): multifd channels announcing another one are refused, and so "
                "is a stream whose configuration carries another one (default all zeros, like QEMU without -uuid)");
  r->add_flag("--prealloc", recv.prealloc,
              "Fault in the destination memory before the migration starts (with --ram: before listening)");
  r->add_option("--ready-file", recv.ready_file, "Once listening, write the bound URI (with the real port) here");
  r->add_option("--timeout", recv.timeout,
                "Seconds to wait for the source's connections (with multifd: all of them) and their first bytes")
      ->capture_default_str();
  r->add_flag("--json", recv.json, "Print one JSON object (query-migrate fields + verified) instead of the summary");
  r->add_option("--max-ram", recv.max_ram,
                "The most RAM the stream may make this side allocate, e.g. 64G; a stream announcing more is refused "
                "before anything is allocated (default: the available memory; with --memory-file the free space "
                "where the file goes, and the available memory too when that is tmpfs)");

}

std::string SelfPath(const char* argv0) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) return std::string(buf, n);
  return argv0;
}

}  // namespace
}  // namespace ferry::cli

int main(int argc, char** argv) {
  using namespace ferry::cli;
  BlockTermSignals();
  CLI::App app{
      "ferry: live migration of virtual-machine memory in QEMU's migration stream format.\n"
      "Moves a guest's RAM between two processes (or hosts) over tcp, unix sockets or descriptors,\n"
      "live while it is being written, and verifies the result page by page."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ferry 0.1.0");

  SendOpts send;
  auto* s = app.add_subcommand("send", "Migrate a guest's memory to a destination (the source side).");
  s->add_option("URI", send.uri,
                "Where to send: tcp:HOST:PORT, tcp:[V6]:PORT, unix:PATH, fd:N, rdma:HOST:PORT (QEMU's RDMA protocol) or file:PATH[,offset=N]")
      ->required();
  AddSendOptions(s, send);
  SendOpts save;
  std::string save_file;
  auto* sv = app.add_subcommand("save", "Save a guest's memory into FILE (ferry send file:FILE); exit 0 once it "
                                        "is on stable storage.");
  sv->add_option("FILE", save_file, "The file to write (created or truncated)")->required();
  AddSendOptions(sv, save);

  RecvOpts recv;
  auto* r = app.add_subcommand("recv", "Receive one migration (the destination side); exit 0 only if it completed "
                                       "and verified.");
  r->add_option("URI", recv.uri,
                "Where to listen: tcp:HOST:PORT (port 0 picks one), unix:PATH, fd:N, rdma:HOST:PORT (QEMU's RDMA protocol; needs an RDMA device), or read file:PATH[,offset=N]")
      ->required();
  AddRecvOptions(r, recv);
  RecvOpts load;
  std::string load_file;
  auto* ld = app.add_subcommand("load", "Load a guest's memory saved in FILE (ferry recv file:FILE); exit 0 only "
                                        "if it is complete and verified.");
  ld->add_option("FILE", load_file, "The saved file")->required();
  AddRecvOptions(ld, load);

  std::string inspect_file;
  uint64_t inspect_offset = 0;
  bool inspect_json = false;
  auto* in = app.add_subcommand("inspect", "Walk a saved migration stream without loading it: header, sections, "
                                           "blocks, record counts, mapped-ram layout; exit 0 only if complete.");
  in->add_option("FILE", inspect_file, "The saved file")->required();
  in->add_option("--offset", inspect_offset, "Where the stream starts in the file")->capture_default_str();
  in->add_flag("--json", inspect_json, "Print one JSON object instead of text");

  std::string demo_ram = "1G", demo_rate = "256M";
  auto* d = app.add_subcommand("demo", "A live migration between two ferry processes on this machine, with its "
                                       "summary.");
  d->add_option("--ram", demo_ram, "Guest RAM size")->capture_default_str();
  d->add_option("--dirty-rate", demo_rate, "Guest dirty rate (bytes/s)")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  if (*s) return RunSend(send);
  if (*r) return RunRecv(recv);
  if (*sv) {
    save.uri = "file:" + save_file;
    return RunSend(save);
  }
  if (*ld) {
    load.uri = "file:" + load_file;
    return RunRecv(load);
  }
  if (*in) return RunInspect(inspect_file, inspect_offset, inspect_json);
  if (*d) return RunDemo(SelfPath(argv[0]), demo_ram, demo_rate);
  return kExitUsage;
}
