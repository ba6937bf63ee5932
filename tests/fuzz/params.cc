// Fuzz target: what users type for parameters — sizes ("4G", "1.5M"),
// -p NAME=VALUE, -c NAME=on|off, --qemu-compat MACHINE[,version=...] and
// --uuid — then the check of the whole combination.
//
// Input: lines; the first character says what the rest is:
//   s SIZE          ParseSize
//   p NAME=VALUE    MigrationParams::SetParameter
//   c NAME=on|off   MigrationParams::SetCapability
//   q SPEC          MigrationParams::SetQemuCompat
//   u UUID          ParseUuid (and FormatUuid of the result)
//   r URI           the URI for Plan (default tcp:127.0.0.1:1)
// After all lines, MigrationParams::Validate; then the same lines as one
// MigrationSpec through Plan (transports/transports.h), for both sides:
// every name routed to its owner, every combination checked, never opened.
#include <cstdint>
#include <string>
#include <string_view>

#include "core/params.h"
#include "core/uuid.h"
#include "transports/transports.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  MigrationParams p;
  MigrationSpec spec;
  spec.uri = "tcp:127.0.0.1:1";
  while (!rest.empty()) {
    const size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    if (line.size() < 2) continue;
    const char what = line[0];
    const std::string_view arg = line.substr(2);
    const size_t eq = arg.find('=');
    const std::string_view name = arg.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? std::string_view() : arg.substr(eq + 1);
    switch (what) {
      case 's': {
        Result<uint64_t> v = ParseSize(arg);
        (void)v;
        break;
      }
      case 'p':
        (void)p.SetParameter(name, value);
        spec.parameters.emplace_back(arg);
        break;
      case 'c':
        (void)p.SetCapability(name, value == "on");
        spec.capabilities.emplace_back(arg);
        break;
      case 'q':
        (void)p.SetQemuCompat(arg);
        spec.qemu_compat = std::string(arg);
        break;
      case 'r':
        spec.uri = std::string(arg);
        break;
      case 'u': {
        Result<Uuid> u = ParseUuid(arg);
        if (u.ok()) {
          Result<Uuid> again = ParseUuid(FormatUuid(*u));
          if (!again.ok() || *again != *u) __builtin_trap();
          p.uuid = *u;
        }
        spec.uuid = std::string(arg);
        break;
      }
      default:
        break;
    }
  }
  (void)p.Validate();
  for (Side side : {Side::kSource, Side::kDestination}) {
    Result<MigrationPlan> plan = Plan(side, spec);
    if (plan.ok() && plan->endpoint().text() != spec.uri) __builtin_trap();
    if (!plan.ok() && plan.status().message().empty()) __builtin_trap();
  }
  return 0;
}
