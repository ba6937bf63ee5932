#include "core/setup.h"

#include <algorithm>

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

bool Listed(const std::vector<std::string_view>& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string JoinNames(const std::vector<std::string_view>& names) {
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Transport defaults

Result<std::unique_ptr<Endpoint>> Transport::ParseEndpoint(std::string_view uri, Side side) {
  (void)side;
  return Status::Internal("transport " + std::string(name()) + " serves no URI like " + std::string(uri));
}

Status Transport::SetParameter(std::string_view name, std::string_view value) {
  (void)value;
  return Status::Internal("transport " + std::string(this->name()) + " has no parameter " + std::string(name));
}

Status Transport::SetCapability(std::string_view name, bool on) {
  (void)on;
  return Status::Internal("transport " + std::string(this->name()) + " has no capability " + std::string(name));
}

std::optional<bool> Transport::capability(std::string_view name) const {
  (void)name;
  return std::nullopt;
}

std::optional<std::string> Transport::parameter(std::string_view name) const {
  (void)name;
  return std::nullopt;
}

std::chrono::milliseconds OpenContext::remaining() const {
  auto left = timeout - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  return std::max(left, std::chrono::milliseconds(0));
}

// ---------------------------------------------------------------------------
// Connection

Connection::~Connection() {
  // The receiver and sinks hold channels; the channel before what it was
  // made from (kept_: files, listeners).
  receiver_.reset();
  sinks_.reset();
  main_.reset();
}

void Connection::Apply(DestinationOptions& options) const {
  options.receiver = receiver_.get();
  if (!two_way_) options.send_verdict = false;
  options.reject_trailing_bytes = reject_trailing_bytes_;
}

Status Connection::Finish(MigrationStats& stats) {
  if (!finish_ || stats.state != MigrationState::kCompleted) return Status::Ok();
  Status s = finish_(stats);
  if (!s.ok()) {
    stats.state = MigrationState::kFailed;
    stats.error = s.message();
  }
  return s;
}

Status Connection::Explain(const Status& failed) const {
  if (failed.ok() || !explain_) return failed;
  return explain_(failed);
}

void Connection::AddStats(MigrationStats& stats) const {
  for (const auto& add : stats_) add(stats);
}

// ---------------------------------------------------------------------------
// MigrationPlan

MigrationPlan::MigrationPlan(MigrationPlan&&) noexcept = default;
MigrationPlan& MigrationPlan::operator=(MigrationPlan&&) noexcept = default;
MigrationPlan::~MigrationPlan() = default;

bool MigrationPlan::capability(std::string_view name) const {
  if (name == "verify") return params_.verify;
  if (name == "validate-uuid") return params_.validate_uuid;
  for (const auto& t : transports_) {
    if (std::optional<bool> on = t->capability(name)) return *on;
  }
  return false;
}

std::optional<std::string> MigrationPlan::parameter(std::string_view name) const {
  for (const auto& t : transports_) {
    if (std::optional<std::string> v = t->parameter(name)) return v;
  }
  return std::nullopt;
}

void MigrationPlan::AddStats(MigrationStats& stats) const {
  for (const auto& t : transports_) t->AddStats(*this, stats);
}

DestinationOptions MigrationPlan::destination_options() const {
  DestinationOptions opts;
  opts.expect_verify = params_.verify;
  opts.machine = params_.machine;
  opts.uuid = params_.uuid;
  opts.note = spec_.note;
  if (params_.qemu_compat) {
    opts.expect_verify = false;
    opts.send_verdict = false;
    opts.qemu_devices = true;
    opts.qemu_version = params_.qemu_version;
  }
  opts.no_progress_timeout = params_.no_progress_timeout();
  return opts;
}

Result<std::unique_ptr<Connection>> MigrationPlan::OpenSource(std::stop_token stop) const {
  if (side_ != Side::kSource) return Status::Internal("OpenSource on a destination plan");
  return Open(std::move(stop), {});
}

Result<std::unique_ptr<Connection>> MigrationPlan::OpenDestination(
    std::stop_token stop, std::function<Status(std::string_view)> on_listening) const {
  if (side_ != Side::kDestination) return Status::Internal("OpenDestination on a source plan");
  return Open(std::move(stop), std::move(on_listening));
}

Result<std::unique_ptr<Connection>> MigrationPlan::Open(std::stop_token stop,
                                                        std::function<Status(std::string_view)> on_listening) const {
  auto conn = std::make_unique<Connection>();
  OpenContext ctx{*this,
                  std::move(stop),
                  side_ == Side::kSource ? spec_.connect_timeout : spec_.accept_timeout,
                  Clock::now(),
                  spec_.note ? spec_.note : [](std::string_view) {},
                  on_listening ? on_listening : [](std::string_view) { return Status::Ok(); },
                  {},
                  *conn};
  const Side side = side_;
  std::stop_token wrap_stop = ctx.stop;
  ctx.wrap = [this, side, wrap_stop](std::unique_ptr<Channel> ch) -> Result<std::unique_ptr<Channel>> {
    for (const auto& t : transports_) {
      FERRY_ASSIGN_OR_RETURN(ch, t->WrapChannel(std::move(ch), side, wrap_stop));
    }
    return ch;
  };
  ctx.handshakes = std::any_of(transports_.begin(), transports_.end(),
                               [&](const auto& t) { return t->handshakes(*this); });
  FERRY_RETURN_IF_ERROR(owner_->OpenEndpoint(ctx));
  for (const auto& t : transports_) FERRY_RETURN_IF_ERROR(t->Attach(ctx));
  if (!conn->has_channel() && ctx.acceptor) {
    // No transport sorts incoming connections: the first one is the stream.
    FERRY_ASSIGN_OR_RETURN(auto ch, ctx.acceptor->Accept(ctx.remaining(), ctx.stop));
    conn->set_channel(std::move(ch));
  }
  if (!conn->has_channel()) return Status::Internal("transport " + std::string(owner_->name()) + " opened no channel");
  return conn;
}

// ---------------------------------------------------------------------------
// Plan

Result<MigrationPlan> Plan(const TransportRegistry& registry, Side side, const MigrationSpec& spec) {
  MigrationPlan plan;
  plan.side_ = side;
  plan.spec_ = spec;
  for (const auto& make : registry.factories()) plan.transports_.push_back(make());

  // The URI, by its scheme's owner.
  const std::string_view uri = spec.uri;
  const size_t colon = uri.find(':');
  const std::string_view scheme = uri.substr(0, colon == std::string_view::npos ? 0 : colon);
  std::string syntax;
  std::vector<std::string_view> parts;
  for (const auto& t : plan.transports_) {
    if (!t->uri_syntax().empty()) parts.push_back(t->uri_syntax());
    if (colon != std::string_view::npos && !plan.owner_ && Listed(t->schemes(), scheme)) plan.owner_ = t.get();
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    syntax += (i == 0 ? "" : i + 1 == parts.size() ? " or " : ", ");
    syntax += parts[i];
  }
  if (!plan.owner_) {
    return Status::InvalidArgument("bad URI '" + std::string(uri) + "': unknown scheme (expected " + syntax + ")");
  }
  FERRY_ASSIGN_OR_RETURN(plan.endpoint_, plan.owner_->ParseEndpoint(uri, side));


  // --qemu-compat first: -p and -c given with it still override.
  if (!spec.qemu_compat.empty()) {
    FERRY_RETURN_IF_ERROR(plan.params_.SetQemuCompat(spec.qemu_compat));
    for (const auto& t : plan.transports_) t->ApplyQemuCompat(plan.params_);
  }

  std::vector<std::string_view> known_params = MigrationParams::kParameters;
  std::vector<std::string_view> known_caps = MigrationParams::kCapabilities;
  for (const auto& t : plan.transports_) {
    for (std::string_view n : t->parameters()) known_params.push_back(n);
    for (std::string_view n : t->capabilities()) known_caps.push_back(n);
  }

  for (const std::string& p : spec.parameters) {
    const size_t eq = p.find('=');
    if (eq == std::string::npos) return Status::InvalidArgument("-p needs NAME=VALUE, got '" + p + "'");
    const std::string_view name = std::string_view(p).substr(0, eq);
    const std::string_view value = std::string_view(p).substr(eq + 1);
    if (Listed(MigrationParams::kParameters, name)) {
      FERRY_RETURN_IF_ERROR(plan.params_.SetParameter(name, value));
      continue;
    }
    auto owner = std::find_if(plan.transports_.begin(), plan.transports_.end(),
                              [&](const auto& t) { return Listed(t->parameters(), name); });
    if (owner == plan.transports_.end()) {
      return Status::InvalidArgument("unknown parameter '" + std::string(name) + "' (ferry knows: " +
                                     JoinNames(known_params) + ")");
    }
    FERRY_RETURN_IF_ERROR((*owner)->SetParameter(name, value));
  }

  for (const std::string& c : spec.capabilities) {
    const size_t eq = c.find('=');
    const std::string v = eq == std::string::npos ? "" : c.substr(eq + 1);
    if (v != "on" && v != "off") return Status::InvalidArgument("-c needs CAPABILITY=on|off, got '" + c + "'");
    const std::string_view name = std::string_view(c).substr(0, eq);
    const bool on = v == "on";
    auto owner = std::find_if(plan.transports_.begin(), plan.transports_.end(),
                              [&](const auto& t) { return Listed(t->capabilities(), name); });
    if (owner != plan.transports_.end()) {
      FERRY_RETURN_IF_ERROR((*owner)->SetCapability(name, on));
      continue;
    }
    Status s = plan.params_.SetCapability(name, on);
    if (s.code() == Code::kInvalidArgument && !Listed(MigrationParams::kCapabilities, name)) {
      return Status::InvalidArgument("unknown capability '" + std::string(name) + "' (ferry knows: " +
                                     JoinNames(known_caps) + ")");
    }
    FERRY_RETURN_IF_ERROR(s);
  }

  if (!spec.uuid.empty()) {
    Result<Uuid> u = ParseUuid(spec.uuid);
    if (!u.ok()) return u.status().WithContext("--uuid");
    plan.params_.uuid = *u;
    plan.uuid_ = *u;
  }

  // Everyone's settings where core reads them, then the checks: core's,
  // then each transport's, in registry order.
  for (const auto& t : plan.transports_) t->Contribute(plan.params_);
  FERRY_RETURN_IF_ERROR(plan.params_.Validate());
  for (const auto& t : plan.transports_) FERRY_RETURN_IF_ERROR(t->Validate(plan));
  for (const auto& t : plan.transports_) FERRY_RETURN_IF_ERROR(t->CheckEndpoint(plan));
  return plan;
}

}  // namespace ferry
