#include "file/file_transport.h"

#include <sys/stat.h>

#include <chrono>

#include "core/uri.h"
#include "file/file_channel.h"
#include "file/inspect.h"
#include "file/mapped_ram.h"
#include "file/stats.h"
#include "socket/socket.h"

namespace ferry {
namespace {

class FileEndpoint final : public Endpoint {
 public:
  explicit FileEndpoint(Uri uri) : Endpoint(uri.text), uri_(std::move(uri)), fifo_(IsFifo(uri_.path)) {}
  const Uri& uri() const { return uri_; }
  const std::string& path() const { return uri_.path; }
  uint64_t offset() const { return uri_.offset; }
  bool fifo() const { return fifo_; }
  bool local_file() const override { return true; }

 private:
  Uri uri_;
  bool fifo_;  // a FIFO is a one-way stream like a pipe (fd:N), not a file
};

class FileTransport final : public Transport {
 public:
  std::string_view name() const override { return "file"; }
  std::vector<std::string_view> schemes() const override { return {"file"}; }
  std::string_view uri_syntax() const override { return "file:PATH[,offset=N]"; }
  Result<std::unique_ptr<Endpoint>> ParseEndpoint(std::string_view text, Side side) override {
    (void)side;
    FERRY_ASSIGN_OR_RETURN(Uri uri, ParseUri(text));
    return std::unique_ptr<Endpoint>(std::make_unique<FileEndpoint>(std::move(uri)));
  }

  std::vector<std::string_view> parameters() const override { return {"direct-io"}; }
  std::vector<std::string_view> capabilities() const override { return {"mapped-ram"}; }
  Status SetParameter(std::string_view name, std::string_view value) override {
    (void)name;  // "direct-io"
    if (value == "on") direct_io_ = true;
    else if (value == "off") direct_io_ = false;
    else return Status::InvalidArgument("direct-io must be on or off, got '" + std::string(value) + "'");
    return Status::Ok();
  }
  Status SetCapability(std::string_view name, bool on) override {
    (void)name;  // "mapped-ram"
    mapped_ram_ = on;
    return Status::Ok();
  }
  std::optional<bool> capability(std::string_view name) const override {
    if (name == "mapped-ram") return mapped_ram_;
    return std::nullopt;
  }
  // mapped-ram and direct-io stay here: the sink factory and the receiver
  // this transport builds carry them (and announce "mapped-ram" themselves).

  Status Validate(const PlanView& plan) const override {
    const MigrationParams& p = plan.params();
    if (mapped_ram_ && p.qemu_compat && p.qemu_version == MigrationParams::QemuVersion::k7_2) {
      return Status::InvalidArgument("QEMU 7.2 has no mapped-ram (it arrived in QEMU 9.0): use --qemu-compat "
                                     "MACHINE,version=10.0 or a plain stream");
    }
    if (direct_io_ && !mapped_ram_) return Status::InvalidArgument("direct-io needs the mapped-ram capability");
    if (mapped_ram_ && plan.capability("zero-copy-send")) {
      return Status::InvalidArgument("zero-copy-send cannot be used with mapped-ram (files have no MSG_ZEROCOPY)");
    }
    return Status::Ok();
  }

  Status CheckEndpoint(const PlanView& plan) const override {
    const auto* ep = dynamic_cast<const FileEndpoint*>(&plan.endpoint());
    if (!ep) {
      if (mapped_ram_) {
        return Status::InvalidArgument("the mapped-ram capability needs a file: URI (or ferry save/load); " +
                                       plan.endpoint().text() + " is not a file");
      }
      return Status::Ok();
    }
    if (ep->fifo()) {
      if (mapped_ram_) return Status::InvalidArgument("mapped-ram needs a seekable file; " + ep->path() + " is a FIFO");
      if (ep->offset() != 0) return Status::InvalidArgument(ep->path() + " is a FIFO: it has no offsets");
    }
    if (plan.capability("multifd") && !mapped_ram_) {
      return Status::InvalidArgument("multifd to a file needs -c mapped-ram=on (then multifd-channels is the "
                                     "number of file threads); a plain stream in a file is written by one thread");
    }
    if (plan.capability("zero-copy-send")) {
      return Status::InvalidArgument("zero-copy-send cannot be used with a file: URI");
    }
    return Status::Ok();
  }

  Status OpenEndpoint(OpenContext& ctx) override {
    const auto& ep = static_cast<const FileEndpoint&>(ctx.plan.endpoint());
    Connection& conn = ctx.connection;
    const bool source = ctx.plan.side() == Side::kSource;
    conn.set_two_way(false);
    if (ep.fifo()) {
      // Waits (bounded by the timeout, ended by `stop`) for the other end.
      if (!source) ctx.note("reading FIFO " + ep.path() + ": waiting for a writer");
      FERRY_ASSIGN_OR_RETURN(UniqueFd fd, OpenFifo(ep.path(), /*write=*/source, ctx.timeout, ctx.stop));
      conn.set_channel(MakeFdChannel(std::move(fd), "fifo:" + ep.path()));
      return Status::Ok();
    }
    std::unique_ptr<FileChannel> file;
    if (source) {
      FERRY_ASSIGN_OR_RETURN(file, CreateFileForSave(ep.path(), ep.offset()));
    } else {
      FERRY_ASSIGN_OR_RETURN(file, OpenFileForLoad(ep.path(), ep.offset()));
      // The file ends with the stream: anything after it is refused.
      struct stat st;
      conn.set_reject_trailing_bytes(stat(ep.path().c_str(), &st) == 0 && S_ISREG(st.st_mode));
    }
    std::shared_ptr<FileChannel> shared(std::move(file));
    FileChannel* f = shared.get();
    conn.Keep(shared);
    conn.set_channel_ref(f);
    const std::string path = ep.path();
    const uint64_t offset = ep.offset();
    if (source) {
      // The save counts only once the data is on stable storage.
      conn.set_finish([f, path](MigrationStats& stats) {
        const auto start = std::chrono::steady_clock::now();
        Status s = f->Finish();
        auto sync = std::make_shared<FileSyncStats>();
        sync->sync_ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  std::chrono::steady_clock::now() - start)
                                                  .count());
        stats.Set(std::move(sync));
        return s.ok() ? s : s.WithContext("flushing " + path);
      });
    } else if (!mapped_ram_) {
      // A mapped-ram file read as a plain stream fails on its first header
      // byte with a record-level message; say what the file is.
      conn.set_explain([path, offset](const Status& failed) {
        Result<InspectReport> layout = InspectFile(path, offset);
        if (layout.ok() && layout->mapped_ram) {
          return Status::Protocol(failed.message() + " (the file has the mapped-ram layout: load it with -c "
                                                     "mapped-ram=on)");
        }
        return failed;
      });
    }
    if (!mapped_ram_) return Status::Ok();
    mapped_ram::FileOptions fo;
    fo.direct_io = direct_io_;
    // multifd's channels are the file threads here.
    if (ctx.plan.capability("multifd")) {
      fo.channels = static_cast<uint32_t>(std::stoul(ctx.plan.parameter("multifd-channels").value_or("0")));
    }
    fo.note = ctx.note;
    if (source) {
      conn.set_sink_factory(std::make_unique<mapped_ram::MappedRamSinkFactory>(*f, std::move(fo)));
    } else {
      fo.fresh_memory = true;
      conn.set_receiver(mapped_ram::MakeMappedRamReceiver(*f, std::move(fo)));
    }
    return Status::Ok();
  }

 private:
  bool mapped_ram_ = false;
  bool direct_io_ = false;
};

}  // namespace

std::unique_ptr<Transport> MakeFileTransport() { return std::make_unique<FileTransport>(); }

}  // namespace ferry
