#include "multifd/transport.h"

#include <algorithm>
#include <string>

#include "multifd/multifd.h"
#include "multifd/settings.h"
#include "multifd/stats.h"

namespace ferry::multifd {
namespace {

class MultifdTransport final : public Transport {
 public:
  std::string_view name() const override { return "multifd"; }
  std::vector<std::string_view> parameters() const override { return Settings::ParameterNames(); }
  std::vector<std::string_view> capabilities() const override { return Settings::CapabilityNames(); }
  Status SetParameter(std::string_view name, std::string_view value) override {
    return settings_.SetParameter(name, value);
  }
  Status SetCapability(std::string_view name, bool on) override { return settings_.SetCapability(name, on); }
  std::optional<bool> capability(std::string_view name) const override {
    if (name == "multifd") return settings_.enabled;
    if (name == "zero-copy-send") return settings_.zero_copy_send;
    return std::nullopt;
  }
  void ApplyQemuCompat(const MigrationParams& core) override {
    if (core.qemu_version == MigrationParams::QemuVersion::k7_2) settings_.ApplyQemu72();
  }
  std::optional<std::string> parameter(std::string_view name) const override { return settings_.Get(name); }
  Status Validate(const PlanView& plan) const override { return settings_.Validate(plan.params()); }
  Status CheckEndpoint(const PlanView& plan) const override {
    const Endpoint& ep = plan.endpoint();
    // Over a file the channels are mapped-ram's threads: file/ checks that.
    if (!settings_.enabled || ep.can_connect_more() || ep.local_file() || ep.own_multifd_channels()) {
      return Status::Ok();
    }
    return Status::InvalidArgument("the multifd capability needs a tcp: or unix: URI (it opens " +
                                   std::to_string(settings_.channels) + " extra connections); " + ep.text() +
                                   " is a single descriptor");
  }
  // Over sockets, --json has the "multifd" object even before a channel
  // counted anything.
  void AddStats(const PlanView& plan, MigrationStats& stats) const override {
    if (settings_.enabled && !plan.endpoint().local_file()) stats.SetIfAbsent(std::make_shared<MultifdStats>());
  }

  Status Attach(OpenContext& ctx) override {
    Connection& conn = ctx.connection;
    if (ctx.plan.side() == Side::kSource) {
      if (!settings_.enabled || !ctx.connect_more) return Status::Ok();
      // The main stream is connected first: QEMU 7.2 takes the first
      // connection it accepts as the main stream.
      FERRY_ASSIGN_OR_RETURN(auto chans,
                             ConnectMultifd(ctx.connect_more, settings_.channels, uuid(ctx),
                                            std::max(ctx.remaining(), std::chrono::milliseconds(1000)), ctx.stop));
      for (size_t id = 0; id < chans.size(); ++id) conn.name_channel(chans[id].get(), "multifd " + std::to_string(id));
      conn.set_sink_factory(std::make_unique<MultifdSinkFactory>(settings_, std::move(chans)));
      return Status::Ok();
    }
    if (!ctx.acceptor || conn.has_channel()) return Status::Ok();
    // Without multifd this accepts the one main connection (and refuses a
    // multifd channel or garbage there, by its first bytes).
    FERRY_ASSIGN_OR_RETURN(IncomingChannels in,
                           AcceptMigrationChannels(*ctx.acceptor, settings_.enabled ? settings_.channels : 0,
                                                   uuid(ctx), ctx.remaining(), ctx.stop, ctx.handshakes));
    conn.name_channel(in.main_connection, "main");
    for (size_t id = 0; id < in.multifd.size(); ++id) {
      conn.name_channel(in.multifd[id].get(), "multifd " + std::to_string(id));
    }
    conn.set_channel(std::move(in.main));
    if (settings_.enabled) {
      conn.set_receiver(MakeMultifdReceiver(settings_, std::move(in.multifd)));
    }
    return Status::Ok();
  }

 private:
  static Uuid uuid(const OpenContext& ctx) { return ctx.plan.params().uuid.value_or(Uuid{}); }
  Settings settings_;
};

}  // namespace

std::unique_ptr<Transport> MakeTransport() { return std::make_unique<MultifdTransport>(); }

}  // namespace ferry::multifd
