// Setting a migration up: one description (MigrationSpec), validated once
// (Plan), opened once (MigrationPlan::OpenSource / OpenDestination) into a
// Connection that MigrationSource / MigrationDestination run over.
//
// Core owns the interfaces; every transport folder implements `Transport`
// and is listed once in transports/transports.cc (the registry):
//
//   socket/   tcp:, unix:, fd:            endpoints (dials and accepts connections)
//   file/     file: (regular file, FIFO)  endpoint; mapped-ram and direct-io (sink and receiver)
//   multifd/  capability multifd           sink/receiver over extra socket connections
//   rdma/     rdma:                       endpoint with its own sink/receiver (QEMU's RDMA protocol)
//   tls/      parameters tls-*             a TLS session on every socket connection (WrapChannel)
//
//   MigrationSpec spec;
//   spec.uri = "unix:/run/vm.sock";
//   spec.capabilities = {"multifd=on"};
//   FERRY_ASSIGN_OR_RETURN(MigrationPlan plan, Plan(Side::kSource, spec));   // transports/transports.h
//   FERRY_ASSIGN_OR_RETURN(auto conn, plan.OpenSource(stop.get_token()));
//   MigrationSource src(plan.params(), blocks, tracker, guest, {}, conn->sink_factory());
//   Status s = src.Run(conn->channel(), conn->two_way());
//   MigrationStats st = src.Stats();
//   conn->AddStats(st);                 // transports' counters (tls sessions)
//   if (s.ok()) s = conn->Finish(st);   // a file: fdatasync, timed into the stats
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "channel.h"
#include "migration.h"
#include "page_sink.h"
#include "params.h"
#include "ram_loader.h"
#include "stats.h"
#include "status.h"
#include "uuid.h"

namespace ferry {

enum class Side { kSource, kDestination };

// One migration, as a user describes it (the command line's URI, --qemu-compat,
// -p, -c, --uuid and timeouts).
struct MigrationSpec {
  std::string uri;
  std::string qemu_compat;                // "" or MACHINE[,version=7.2|10.0]
  std::vector<std::string> parameters;    // "NAME=VALUE"
  std::vector<std::string> capabilities;  // "NAME=on|off"
  std::string uuid;                       // "" = none (all zeros where one is needed)
  // Source: how long to keep connecting (a FIFO: to wait for a reader).
  std::chrono::milliseconds connect_timeout{30000};
  // Destination: how long to wait for the connections (a FIFO: for a writer)
  // and their first bytes.
  std::chrono::milliseconds accept_timeout{300000};
  // One-line notices ("listening on ...", io_uring fallbacks); may be empty.
  std::function<void(std::string_view)> note;
};

// Where a URI points, as the transport owning its scheme parsed it. Other
// transports check combinations against these facts.
class Endpoint {
 public:
  virtual ~Endpoint() = default;
  const std::string& text() const { return text_; }
  // More connections to the same place can be made (tcp:, unix:).
  virtual bool can_connect_more() const { return false; }
  // A local file: a file: URI, on a regular (or new) file or a FIFO; file/
  // decides what works there (multifd means mapped-ram's file threads).
  virtual bool local_file() const { return false; }
  // Both directions: the source waits for the destination's confirmation,
  // the destination answers with a verdict.
  virtual bool two_way() const { return false; }
  // The endpoint's transport drives the multifd channels itself (rdma:'s
  // queue pairs): multifd/ then opens no connections of its own.
  virtual bool own_multifd_channels() const { return false; }

 protected:
  explicit Endpoint(std::string text) : text_(std::move(text)) {}

 private:
  std::string text_;
};

// Incoming connections (a listening socket), for transports that sort them
// (multifd's main stream + channels).
class Acceptor {
 public:
  virtual ~Acceptor() = default;
  // One connection, already wrapped by every channel layer (tls). kTimeout,
  // kCancelled (stop or Shutdown) as socket/'s Listener.
  virtual Result<std::unique_ptr<Channel>> Accept(std::chrono::milliseconds timeout, std::stop_token stop) = 0;
  virtual void Shutdown() = 0;
  virtual std::string address() const = 0;
};

// An opened migration: what MigrationSource / MigrationDestination run over.
class Connection {
 public:
  Connection() = default;
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Channel& channel() const { return main_ ? *main_ : *main_ref_; }
  // Source: where pages go (null = page records in the main stream).
  PageSinkFactory* sink_factory() const { return sinks_.get(); }
  // Destination: who receives pages outside the main stream (null = none).
  PageReceiver* receiver() const { return receiver_.get(); }
  bool two_way() const { return two_way_; }
  bool reject_trailing_bytes() const { return reject_trailing_bytes_; }

  // Fills the destination's options from this connection: receiver,
  // send_verdict, reject_trailing_bytes. (What the receiver implies — the
  // capabilities it expects, EOS barriers — it says itself: PageReceiver.)
  void Apply(DestinationOptions& options) const;
  // After a completed migration: makes the result durable (a file's
  // fdatasync, which puts its time into `stats`). On failure sets the
  // stats' state and error.
  Status Finish(MigrationStats& stats);
  // A failed load: adds what the transport knows about why (a mapped-ram
  // file read as a plain stream).
  Status Explain(const Status& failed) const;
  // Adds what the transports know of this connection to `stats` (tls/: the
  // session of every channel, MigrationStats::Set): call it on the stats
  // MigrationSource / MigrationDestination report, before printing them.
  void AddStats(MigrationStats& stats) const;

  // For transports, while opening.
  void set_channel(std::unique_ptr<Channel> ch) { main_ = std::move(ch); }
  void set_channel_ref(Channel* ch) { main_ref_ = ch; }
  bool has_channel() const { return main_ != nullptr || main_ref_ != nullptr; }
  void set_sink_factory(std::unique_ptr<PageSinkFactory> f) { sinks_ = std::move(f); }
  void set_receiver(std::unique_ptr<PageReceiver> r) { receiver_ = std::move(r); }
  void set_two_way(bool v) { two_way_ = v; }
  void set_reject_trailing_bytes(bool v) { reject_trailing_bytes_ = v; }
  // `step` runs in Finish (it may Set its counters into the stats).
  void set_finish(std::function<Status(MigrationStats&)> step) { finish_ = std::move(step); }
  void set_explain(std::function<Status(const Status&)> f) { explain_ = std::move(f); }
  // Keeps an object (a file, a listener) alive as long as the connection.
  void Keep(std::shared_ptr<void> thing) { kept_.push_back(std::move(thing)); }
  // Which connection is which ("main", "multifd 0", ...), set by the
  // transport that sorts them (multifd/) for transports reporting facts per
  // connection (tls/). The pointers are valid while opening only: the
  // channels move into sinks and receivers that end before the connection.
  void name_channel(Channel* ch, std::string name) { named_.emplace_back(ch, std::move(name)); }
  const std::vector<std::pair<Channel*, std::string>>& named_channels() const { return named_; }
  // `add` runs in AddStats.
  void add_stats(std::function<void(MigrationStats&)> add) { stats_.push_back(std::move(add)); }

 private:
  friend class MigrationPlan;
  std::vector<std::shared_ptr<void>> kept_;  // destroyed last
  std::unique_ptr<Channel> main_;
  Channel* main_ref_ = nullptr;
  std::unique_ptr<PageSinkFactory> sinks_;
  std::unique_ptr<PageReceiver> receiver_;
  bool two_way_ = false;
  bool reject_trailing_bytes_ = false;
  std::function<Status(MigrationStats&)> finish_;
  std::function<Status(const Status&)> explain_;
  std::vector<std::pair<Channel*, std::string>> named_;
  std::vector<std::function<void(MigrationStats&)>> stats_;
};

class Transport;

// What transports see of a plan while validating and opening.
class PlanView {
 public:
  virtual ~PlanView() = default;
  virtual Side side() const = 0;
  virtual const MigrationParams& params() const = 0;
  virtual const Endpoint& endpoint() const = 0;
  // Whether a capability (any transport's) is on.
  virtual bool capability(std::string_view name) const = 0;
  // A transport's parameter as text (nullopt: no transport has it).
  virtual std::optional<std::string> parameter(std::string_view name) const = 0;
};

// Passed to the endpoint's transport and then to every transport when a
// plan is opened. Transports fill `connection`.
struct OpenContext {
  const PlanView& plan;
  std::stop_token stop;
  std::chrono::milliseconds timeout;  // connect (source) or accept (destination)
  std::chrono::steady_clock::time_point start;
  std::function<void(std::string_view)> note;
  // Destination: called once listening, with the bound address.
  std::function<Status(std::string_view address)> on_listening;
  // Applies every transport's WrapChannel: call it on each connection made
  // or accepted (tls wraps them all, main and multifd).
  std::function<Result<std::unique_ptr<Channel>>(std::unique_ptr<Channel>)> wrap;
  Connection& connection;
  // Set by the endpoint's transport when it can make more connections
  // (source) or accept more (destination); the main connection is left to
  // the transport that sorts connections (multifd) when `acceptor` is set.
  std::function<Result<std::unique_ptr<Channel>>(std::chrono::milliseconds, std::stop_token)> connect_more;
  Acceptor* acceptor = nullptr;
  // Some transport's WrapChannel runs a handshake the peer must answer
  // before a connection's first bytes (tls): a destination then accepts all
  // its connections before it reads any.
  bool handshakes = false;

  std::chrono::milliseconds remaining() const;
};

// One transport's part of one migration: its URI schemes, its parameters and
// capabilities (and their values: it owns them), its checks, and its share
// of opening. Every hook is optional.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::string_view name() const = 0;

  // URIs: schemes served ("tcp", "unix") and their syntax for messages
  // ("tcp:HOST:PORT, tcp:[V6]:PORT").
  virtual std::vector<std::string_view> schemes() const { return {}; }
  virtual std::string_view uri_syntax() const { return {}; }
  virtual Result<std::unique_ptr<Endpoint>> ParseEndpoint(std::string_view uri, Side side);

  // Settings it owns, named as QEMU names them.
  virtual std::vector<std::string_view> parameters() const { return {}; }
  virtual std::vector<std::string_view> capabilities() const { return {}; }
  virtual Status SetParameter(std::string_view name, std::string_view value);
  virtual Status SetCapability(std::string_view name, bool on);
  virtual std::optional<bool> capability(std::string_view name) const;
  // A parameter's current value as text, for other transports (file/ asks
  // multifd-channels: its thread count); nullopt if not its own.
  virtual std::optional<std::string> parameter(std::string_view name) const;
  // --qemu-compat: that generation's defaults (7.2's multifd barriers),
  // before -p / -c apply.
  virtual void ApplyQemuCompat(const MigrationParams& core) { (void)core; }
  // Copies settings where core code reads them (MigrationParams); the
  // built-in transports keep theirs to themselves.
  virtual void Contribute(MigrationParams& params) const { (void)params; }
  // Checks combinations of settings (its own with core's and other
  // transports'); called in registry order, after core's checks.
  virtual Status Validate(const PlanView& plan) const {
    (void)plan;
    return Status::Ok();
  }
  // Then, for every transport, combinations of its settings with the
  // endpoint (multifd to fd:, mapped-ram to a FIFO).
  virtual Status CheckEndpoint(const PlanView& plan) const {
    (void)plan;
    return Status::Ok();
  }
  // Counters it reports for this plan even when nothing was counted (with
  // MigrationStats::SetIfAbsent): multifd's --json object is there whenever
  // the capability is on, also when the migration failed before a channel
  // counted anything.
  virtual void AddStats(const PlanView& plan, MigrationStats& stats) const {
    (void)plan;
    (void)stats;
  }

  // Opening. The endpoint's transport opens the endpoint (main channel, or a
  // way to make connections); then every transport, in registry order, may
  // attach to the connection (sink factory, receiver, more channels).
  virtual Status OpenEndpoint(OpenContext& ctx) {
    (void)ctx;
    return Status::Unsupported("transport cannot open endpoints");
  }
  virtual Status Attach(OpenContext& ctx) {
    (void)ctx;
    return Status::Ok();
  }
  // A layer over every connection a socket endpoint makes or accepts (tls);
  // `stop` is the open's (a handshake ends early with kCancelled).
  virtual Result<std::unique_ptr<Channel>> WrapChannel(std::unique_ptr<Channel> ch, Side side,
                                                       std::stop_token stop) {
    (void)side;
    (void)stop;
    return ch;
  }
  // Whether WrapChannel runs a handshake on each connection for this plan
  // (see OpenContext::handshakes).
  virtual bool handshakes(const PlanView& plan) const {
    (void)plan;
    return false;
  }
};

// The transports a plan may use, in order. Each entry makes a fresh
// Transport (its settings) per plan.
class TransportRegistry {
 public:
  using Factory = std::function<std::unique_ptr<Transport>()>;
  TransportRegistry& Add(Factory f) {
    factories_.push_back(std::move(f));
    return *this;
  }
  const std::vector<Factory>& factories() const { return factories_; }

 private:
  std::vector<Factory> factories_;
};

// A validated migration, ready to open.
class MigrationPlan final : public PlanView {
 public:
  MigrationPlan(MigrationPlan&&) noexcept;
  MigrationPlan& operator=(MigrationPlan&&) noexcept;
  ~MigrationPlan() override;

  Side side() const override { return side_; }
  // Core's settings, with the transports' contributions (what
  // MigrationSource reads).
  const MigrationParams& params() const override { return params_; }
  const Endpoint& endpoint() const override { return *endpoint_; }
  bool capability(std::string_view name) const override;
  std::optional<std::string> parameter(std::string_view name) const override;
  // The uuid multifd channels announce / expect (all zeros without --uuid).
  const Uuid& uuid() const { return uuid_; }
  // Adds, where `stats` lacks them, the counters every transport reports
  // for this plan even when nothing was counted (Transport::AddStats): call
  // it on any stats of this plan before printing them, also when opening
  // failed.
  void AddStats(MigrationStats& stats) const;
  // The destination's options (before opening; Connection::Apply adds the
  // connection's part).
  DestinationOptions destination_options() const;

  // Connects (tcp/unix, with the multifd channels), opens the file or FIFO.
  // Bounded by spec.connect_timeout, ended by `stop` (kCancelled).
  Result<std::unique_ptr<Connection>> OpenSource(std::stop_token stop) const;
  // Listens (then calls on_listening with the bound address) and accepts,
  // or opens the file or FIFO. Bounded by spec.accept_timeout; `stop` ends it.
  Result<std::unique_ptr<Connection>> OpenDestination(
      std::stop_token stop, std::function<Status(std::string_view address)> on_listening = {}) const;

 private:
  friend Result<MigrationPlan> Plan(const TransportRegistry&, Side, const MigrationSpec&);
  MigrationPlan() = default;
  Result<std::unique_ptr<Connection>> Open(std::stop_token stop,
                                           std::function<Status(std::string_view)> on_listening) const;

  Side side_ = Side::kSource;
  MigrationSpec spec_;
  MigrationParams params_;
  Uuid uuid_{};
  std::vector<std::unique_ptr<Transport>> transports_;
  Transport* owner_ = nullptr;  // the endpoint's transport
  std::unique_ptr<Endpoint> endpoint_;
};

// Parses and validates `spec` with the transports of `registry`: every -p/-c
// name goes to its owner (core or a transport); every conflict is one
// QEMU-style message (kInvalidArgument, kUnsupported for QEMU capabilities
// ferry lacks). Plan(Side, spec) in transports/transports.h uses the
// built-in registry.
Result<MigrationPlan> Plan(const TransportRegistry& registry, Side side, const MigrationSpec& spec);

}  // namespace ferry
