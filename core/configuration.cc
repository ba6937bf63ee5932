#include "core/configuration.h"

#include <algorithm>

#include "core/wire.h"

namespace ferry {
namespace {

constexpr std::string_view kPageBitsName = "configuration/target-page-bits";
constexpr std::string_view kCapabilitiesName = "configuration/capabilities";
constexpr std::string_view kUuidName = "configuration/uuid";
constexpr uint32_t kSubsectionVersion = 1;
constexpr uint32_t kPageBits = 12;  // 4 KiB pages

bool IsValidated(std::string_view cap) {
  return std::find(std::begin(kValidatedCapabilities), std::end(kValidatedCapabilities), cap) !=
         std::end(kValidatedCapabilities);
}

bool Has(const std::vector<std::string>& caps, std::string_view cap) {
  return std::find(caps.begin(), caps.end(), cap) != caps.end();
}

void PutSubsectionHeader(StreamWriter& w, std::string_view name) {
  w.Put8(wire::kSubsection);
  w.PutName(std::string(name));
  w.PutBe32(kSubsectionVersion);
}

}  // namespace

Configuration ConfigurationFor(const MigrationParams& params) {
  Configuration c;
  c.machine = params.machine;
  if (params.validate_uuid && params.uuid) c.uuid = params.uuid;
  return c;
}

void WriteConfiguration(StreamWriter& w, const Configuration& c) {
  w.Put8(wire::kConfiguration);
  w.PutBe32(static_cast<uint32_t>(c.machine.size()));
  w.PutBytes(c.machine.data(), c.machine.size());
  if (c.target_page_bits) {
    PutSubsectionHeader(w, kPageBitsName);
    w.PutBe32(*c.target_page_bits);
  }
  if (!c.capabilities.empty()) {
    PutSubsectionHeader(w, kCapabilitiesName);
    w.PutBe32(static_cast<uint32_t>(c.capabilities.size()));
    for (const std::string& cap : c.capabilities) w.PutName(cap);
  }
  if (c.uuid) {
    PutSubsectionHeader(w, kUuidName);
    w.PutBytes(c.uuid->data(), c.uuid->size());
  }
}

Result<Configuration> ReadConfiguration(StreamReader& r) {
  Configuration c;
  const uint32_t len = r.GetBe32();
  FERRY_RETURN_IF_ERROR(r.status().WithContext("reading the configuration section"));
  if (len > 255) return Status::Protocol("configuration machine name of " + std::to_string(len) + " bytes");
  c.machine.resize(len);
  r.GetBytes(c.machine.data(), len);
  FERRY_RETURN_IF_ERROR(r.status().WithContext("reading the configuration section"));

  bool seen_caps = false, seen_uuid = false;
  while (r.Peek8() == wire::kSubsection) {
    r.Get8();
    const std::string name = r.GetName();
    const uint32_t version = r.GetBe32();
    FERRY_RETURN_IF_ERROR(r.status().WithContext("reading a configuration subsection"));
    const bool known = name == kPageBitsName || name == kCapabilitiesName || name == kUuidName;
    if (!known) {
      return Status::Unsupported("subsection '" + name + "' in the configuration section is not supported");
    }
    if (version != kSubsectionVersion) {
      return Status::Protocol("configuration subsection '" + name + "' has version " + std::to_string(version) +
                              ", ferry reads version 1");
    }
    if (name == kPageBitsName) {
      if (c.target_page_bits) return Status::Protocol("configuration subsection '" + name + "' appears twice");
      c.target_page_bits = r.GetBe32();
    } else if (name == kCapabilitiesName) {
      if (seen_caps) return Status::Protocol("configuration subsection '" + name + "' appears twice");
      seen_caps = true;
      const uint32_t count = r.GetBe32();
      FERRY_RETURN_IF_ERROR(r.status().WithContext("reading the capability list"));
      if (count > 64) {
        return Status::Protocol("the configuration lists " + std::to_string(count) + " capabilities (at most 64)");
      }
      for (uint32_t i = 0; i < count; ++i) {
        std::string cap = r.GetName();
        FERRY_RETURN_IF_ERROR(r.status().WithContext("reading the capability list"));
        if (!IsValidated(cap)) return Status::Protocol("received unknown capability '" + cap + "'");
        if (Has(c.capabilities, cap)) return Status::Protocol("capability '" + cap + "' is listed twice");
        c.capabilities.push_back(std::move(cap));
      }
    } else {
      if (seen_uuid) return Status::Protocol("configuration subsection '" + name + "' appears twice");
      seen_uuid = true;
      Uuid u{};
      r.GetBytes(u.data(), u.size());
      c.uuid = u;
    }
    FERRY_RETURN_IF_ERROR(r.status().WithContext("reading configuration subsection '" + name + "'"));
  }
  FERRY_RETURN_IF_ERROR(r.status());
  return c;
}

Status CheckConfiguration(const Configuration& received, const Configuration& local,
                          const std::function<void(std::string_view)>& note) {
  if (received.machine != local.machine) {
    return Status::Mismatch("machine type mismatch: the stream is for '" + received.machine +
                            "', this destination is '" + local.machine + "'" +
                            (local.machine == "ferry" ? " (use --qemu-compat " + received.machine + " for a QEMU peer)"
                                                      : ""));
  }
  if (received.target_page_bits && *received.target_page_bits != kPageBits) {
    return Status::Mismatch("the source's target page size is 2^" + std::to_string(*received.target_page_bits) +
                            " bytes; ferry migrates 4 KiB pages");
  }
  std::string mismatches;
  for (std::string_view cap : kValidatedCapabilities) {
    const bool here = Has(local.capabilities, cap), there = Has(received.capabilities, cap);
    if (here == there) continue;
    if (!mismatches.empty()) mismatches += "; ";
    mismatches += "Capability " + std::string(cap) + " is " + (here ? "on" : "off") + ", but received capability is " +
                  (there ? "on" : "off");
  }
  if (!mismatches.empty()) return Status::Mismatch(mismatches);
  if (received.uuid) {
    if (!local.uuid) {
      if (note) note("the source sent uuid " + FormatUuid(*received.uuid) + ", but this destination has no --uuid to check it against");
    } else if (*received.uuid != *local.uuid) {
      return Status::Mismatch("UUID received is " + FormatUuid(*received.uuid) + " and local is " +
                              FormatUuid(*local.uuid));
    }
  }
  return Status::Ok();
}

}  // namespace ferry
