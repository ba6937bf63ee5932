#include "cli/report.h"
#include "core/thread_name.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace ferry::cli {

namespace {

// Length of the valid UTF-8 sequence at p (1-4; its code point in *cp), or 0
// when p does not start one: a stray continuation byte, a truncated or
// overlong sequence, a surrogate, or a code point above U+10FFFF.
size_t Utf8Sequence(const unsigned char* p, size_t n, uint32_t* cp) {
  const unsigned char b = p[0];
  if (b < 0x80) {
    *cp = b;
    return 1;
  }
  size_t len = 0;
  uint32_t min = 0;
  if (b >= 0xc2 && b <= 0xdf) {
    len = 2, min = 0x80, *cp = b & 0x1f;
  } else if (b >= 0xe0 && b <= 0xef) {
    len = 3, min = 0x800, *cp = b & 0x0f;
  } else if (b >= 0xf0 && b <= 0xf4) {
    len = 4, min = 0x10000, *cp = b & 0x07;
  } else {
    return 0;
  }
  if (n < len) return 0;
  for (size_t i = 1; i < len; ++i) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    *cp = (*cp << 6) | (p[i] & 0x3f);
  }
  if (*cp < min || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff)) return 0;
  return len;
}

void AppendHexByte(std::string& out, unsigned char c) {
  static const char* d = "0123456789abcdef";
  out += "\\x";
  out += d[c >> 4];
  out += d[c & 15];
}

bool IsBidiControl(uint32_t cp) { return (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069); }

nlohmann::json WithValidUtf8(const nlohmann::json& j) {
  if (j.is_string()) return ValidUtf8(j.get_ref<const std::string&>());
  if (j.is_array()) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& v : j) out.push_back(WithValidUtf8(v));
    return out;
  }
  if (j.is_object()) {
    nlohmann::json out = nlohmann::json::object();
    for (auto it = j.begin(); it != j.end(); ++it) out[ValidUtf8(it.key())] = WithValidUtf8(it.value());
    return out;
  }
  return j;
}

const char* SectionTypeName(uint8_t t) {
  switch (t) {
    case 1: return "start";
    case 2: return "part";
    case 3: return "end";
    case 4: return "full";
    case 8: return "command";
    default: return "?";
  }
}
}  // namespace

namespace {

// `s` walked sequence by sequence: every byte that is not part of valid
// UTF-8 becomes \xNN; for a terminal, control characters (every byte of
// them) too, and the bidirectional overrides become \uXXXX.
std::string Escaped(std::string_view s, bool terminal) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = 0;
    const size_t len = Utf8Sequence(p + i, s.size() - i, &cp);
    const bool control = cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f);
    if (len == 0 || (terminal && control)) {
      // Not text, or a control character: every byte of it escaped.
      const size_t n = len == 0 ? 1 : len;
      for (size_t k = 0; k < n; ++k) AppendHexByte(out, p[i + k]);
      i += n;
      continue;
    }
    if (terminal && IsBidiControl(cp)) {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\u%04x", cp);
      out += buf;
    } else {
      out.append(s.data() + i, len);
    }
    i += len;
  }
  return out;
}

}  // namespace

std::string TerminalText(std::string_view s) { return Escaped(s, /*terminal=*/true); }

std::string ValidUtf8(std::string_view s) { return Escaped(s, /*terminal=*/false); }

std::string DumpJson(const nlohmann::json& j) {
  // After WithValidUtf8 nothing can be invalid; `replace` keeps a bug here
  // from ever becoming an abort.
  return WithValidUtf8(j).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

double ProgressPercent(const MigrationStats& s) {
  if (s.ram.total == 0) return 0;
  const double total = static_cast<double>(s.ram.total);
  double pct = 100.0 * static_cast<double>(s.ram.normal + s.ram.duplicate) * 4096 / total;
  if (s.ram.remaining > 0) {
    const double clean = total - std::min(total, static_cast<double>(s.ram.remaining));
    pct = std::min(pct, 100.0 * clean / total);
  }
  return std::clamp(pct, 0.0, 100.0);
}

std::string InspectText(const InspectReport& r, bool json) {
  if (json) {
    nlohmann::json j;
    j["path"] = r.path;
    j["offset"] = r.offset;
    j["file-size"] = r.file_size;
    j["header"] = {{"magic", r.magic}, {"version", r.version}, {"valid", r.header_ok}};
    if (r.has_configuration) j["machine"] = r.machine;
    if (!r.configuration_subsections.empty()) j["configuration-subsections"] = r.configuration_subsections;
    if (r.has_capabilities) j["capabilities"] = r.capabilities;
    if (!r.uuid.empty()) j["uuid"] = r.uuid;
    if (r.target_page_bits != 0) j["target-page-bits"] = r.target_page_bits;
    j["sections"] = nlohmann::json::array();
    for (const InspectSection& s : r.sections) {
      nlohmann::json o = {{"type", SectionTypeName(s.type)}, {"id", s.id},     {"idstr", s.idstr},
                          {"offset", s.offset},              {"size", s.size}};
      if (s.type == 1 || s.type == 4) {
        o["instance"] = s.instance;
        o["version"] = s.version;
      }
      if (s.type == 8) o["payload-bytes"] = s.command_len;
      if (s.type != 8 && s.idstr == "ram") {
        o["pages"] = s.page_records;
        o["zeros"] = s.zero_records;
      }
      if (s.from_vmdesc) {
        o["walked-by-vmdesc"] = true;
        o["subsections"] = s.subsections;
      }
      j["sections"].push_back(o);
    }
    j["blocks"] = nlohmann::json::array();
    for (const InspectBlock& b : r.blocks) {
      nlohmann::json o = {{"name", b.name}, {"size", b.size}};
      if (b.has_addr) o["addr"] = b.addr;
      if (b.mapped_ram) {
        o["mapped-ram"] = {{"header-offset", b.header_offset}, {"version", b.version}, {"page-size", b.page_size},
                           {"bitmap-offset", b.bitmap_offset}, {"pages-offset", b.pages_offset},
                           {"pages-present", b.pages_present}};
      }
      j["blocks"].push_back(o);
    }
    j["mapped-ram"] = r.mapped_ram;
    j["verify"] = r.verify_present;
    j["eof"] = r.eof_present;
    j["vmdesc"] = r.vmdesc_present;
    if (r.vmdesc_present) {
      j["vmdesc-offset"] = r.vmdesc_offset;
      j["vmdesc-bytes"] = r.vmdesc_bytes;
    }
    if (r.trailing_bytes != 0) j["trailing-bytes"] = r.trailing_bytes;
    j["complete"] = r.complete();
    j["verdict"] = r.Verdict();
    if (!r.problem.empty()) j["problem"] = r.problem;
    // Names come from the file and need not be UTF-8.
    return DumpJson(j) + "\n";
  }
  std::string out;
  // Every line may hold names from the file.
  auto line = [&](const std::string& s) { out += TerminalText(s) + "\n"; };
  line("file " + r.path + ": " + std::to_string(r.file_size) + " bytes, stream at offset " + std::to_string(r.offset));
  char buf[64];
  std::snprintf(buf, sizeof(buf), "header: magic 0x%08x, version %u%s", r.magic, r.version,
                r.header_ok ? "" : " (not a valid stream header)");
  line(buf);
  if (r.has_configuration) line("configuration: machine '" + r.machine + "'");
  if (r.has_capabilities) {
    std::string caps;
    for (const std::string& c : r.capabilities) caps += (caps.empty() ? "" : ", ") + c;
    line("configuration: capabilities " + (caps.empty() ? std::string("(none)") : caps));
  }
  if (!r.uuid.empty()) line("configuration: uuid " + r.uuid);
  if (r.target_page_bits != 0) line("configuration: target page bits " + std::to_string(r.target_page_bits));
  for (const InspectSection& s : r.sections) {
    if (s.type == 8) {
      line("command " + std::to_string(s.id) + " '" + s.idstr + "' at " + std::to_string(s.offset) + ", " +
           std::to_string(s.size) + " bytes");
      continue;
    }
    std::string l = std::string("section ") + SectionTypeName(s.type) + " id " + std::to_string(s.id) + " '" +
                    s.idstr + "'";
    if (s.type == 1 || s.type == 4) {
      l += " instance " + std::to_string(s.instance) + " version " + std::to_string(s.version);
    }
    l += " at " + std::to_string(s.offset);
    if (s.size != 0) l += ", " + std::to_string(s.size) + " bytes";
    if (s.idstr == "ram") l += ": " + std::to_string(s.page_records) + " PAGE, " + std::to_string(s.zero_records) + " ZERO";
    if (s.from_vmdesc) {
      l += " (walked by the VM description";
      if (s.subsections != 0) l += ", " + std::to_string(s.subsections) + " subsection" + (s.subsections > 1 ? "s" : "");
      l += ")";
    }
    line(l);
  }
  for (const InspectBlock& b : r.blocks) {
    std::string l = "block '" + b.name + "': " + std::to_string(b.size) + " bytes";
    if (b.has_addr) {
      std::snprintf(buf, sizeof(buf), " at guest address 0x%llx", static_cast<unsigned long long>(b.addr));
      l += buf;
    }
    if (b.mapped_ram) {
      l += "; mapped-ram header at " + std::to_string(b.header_offset) + ": version " + std::to_string(b.version) +
           ", page size " + std::to_string(b.page_size) + ", bitmap at " + std::to_string(b.bitmap_offset) +
           ", pages at " + std::to_string(b.pages_offset) + ", " + std::to_string(b.pages_present) + " of " +
           std::to_string(b.size / 4096) + " pages present";
    }
    line(l);
  }
  line(std::string("layout: ") + (r.mapped_ram ? "mapped-ram" : "plain stream"));
  line(std::string("verification section: ") + (r.verify_present ? "present" : "absent"));
  line(std::string("EOF: ") + (r.eof_present ? "present" : "absent") +
       ", VM description: " +
       (r.vmdesc_present ? "present (" + std::to_string(r.vmdesc_bytes) + " bytes at " +
                               std::to_string(r.vmdesc_offset) + ")"
                         : "absent"));
  line(r.Verdict());
  return out;
}

namespace {

nlohmann::json ToJson(const StatsValue& v) {
  switch (v.kind()) {
    case StatsValue::Kind::kBool: return v.as_bool();
    case StatsValue::Kind::kUint: return v.as_uint();
    case StatsValue::Kind::kDouble: return v.as_double();
    case StatsValue::Kind::kString: return v.as_string();
    case StatsValue::Kind::kArray: {
      nlohmann::json a = nlohmann::json::array();
      for (const StatsValue& item : v.items()) a.push_back(ToJson(item));
      return a;
    }
    case StatsValue::Kind::kObject: break;
  }
  nlohmann::json o = nlohmann::json::object();
  for (size_t i = 0; i < v.keys().size(); ++i) o[v.keys()[i]] = ToJson(v.items()[i]);
  return o;
}

// Every transport's part, in the order the stats hold them.
StatsReport TransportReport(const MigrationStats& s) {
  StatsReport r;
  for (const auto& t : s.transports) t->Report(r);
  return r;
}

}  // namespace

nlohmann::json StatsJson(const MigrationStats& s) {
  const StatsReport transports = TransportReport(s);
  nlohmann::json ram = {
      {"total", s.ram.total},
      {"transferred", s.ram.transferred},
      {"remaining", s.ram.remaining},
      {"duplicate", s.ram.duplicate},
      {"normal", s.ram.normal},
      {"normal-bytes", s.ram.normal_bytes},
      {"dirty-sync-count", s.ram.dirty_sync_count},
      {"dirty-pages-rate", s.ram.dirty_pages_rate},
      {"mbps", s.ram.mbps},
      {"pages-per-second", s.ram.pages_per_second},
      {"page-size", 4096},
      // QMP's query-migrate always has it; multifd's counters set it.
      {"multifd-bytes", 0},
  };
  ram.update(ToJson(transports.ram));
  nlohmann::json j = {
      {"status", std::string(StateName(s.state))},
      {"total-time", s.total_time_ms},
      {"setup-time", s.setup_time_ms},
      {"downtime", s.downtime_ms},
      {"expected-downtime", s.expected_downtime_ms},
      {"ram", ram},
      {"verified", s.verified},
  };
  j.update(ToJson(transports.json));
  if (!s.error.empty()) j["error"] = s.error;
  return j;
}

std::string Summary(const std::string& role, const MigrationStats& s, const std::string& tracker) {
  char buf[512];
  std::string out;
  const double secs = s.total_time_ms / 1000.0;
  snprintf(buf, sizeof(buf), "ferry %s: %s in %.2f s (setup %llu ms, downtime %llu ms)\n", role.c_str(),
           std::string(StateName(s.state)).c_str(), secs, (unsigned long long)s.setup_time_ms,
           (unsigned long long)s.downtime_ms);
  out += buf;
  if (!s.error.empty()) out += "  error: " + TerminalText(s.error) + "\n";
  const StatsReport transports = TransportReport(s);
  out += transports.after_state;
  snprintf(buf, sizeof(buf), "  RAM %s: %llu pages sent in full (%s), %llu zero pages; %s on the wire\n",
           FormatBytes(s.ram.total).c_str(), (unsigned long long)s.ram.normal,
           FormatBytes(s.ram.normal_bytes).c_str(), (unsigned long long)s.ram.duplicate,
           FormatBytes(s.ram.transferred).c_str());
  out += buf;
  if (secs > 0) {
    snprintf(buf, sizeof(buf), "  %.2f GiB/s of guest RAM, %.0f Mbit/s on the wire, %llu dirty syncs%s%s\n",
             s.ram.total / 1073741824.0 / secs, s.ram.mbps, (unsigned long long)s.ram.dirty_sync_count,
             tracker.empty() ? "" : ", dirty tracking: ", tracker.c_str());
    out += buf;
  }
  out += transports.lines;
  if (s.state == MigrationState::kCompleted) {
    out += std::string("  verified: ") + (s.verified ? "yes (XXH3 digest of every page matches)" : "no") + "\n";
  }
  return out;
}

Progress::Progress(std::function<MigrationStats()> poll, std::string role)
    : poll_(std::move(poll)), role_(std::move(role)) {
  if (!isatty(STDERR_FILENO)) return;
  thread_ = std::thread([this] {
    ferry::SetThreadName("progress");
    bool printed = false;
    while (!stop_.load()) {
      MigrationStats s = poll_();
      if (s.state != MigrationState::kNone) {
        const double secs = std::max<uint64_t>(1, s.total_time_ms) / 1000.0;
        fprintf(stderr, "\r\033[K[%s %s] %5.1f%%  %.2f GiB/s  remaining %s  dirty %s/s  iteration %llu%s",
                role_.c_str(), std::string(StateName(s.state)).c_str(), ProgressPercent(s),
                (s.ram.normal + s.ram.duplicate) * 4096.0 / 1073741824.0 / secs, FormatBytes(s.ram.remaining).c_str(),
                FormatBytes(s.ram.dirty_pages_rate * 4096.0).c_str(), (unsigned long long)s.iteration,
                s.not_converging ? "  not converging" : "");
        fflush(stderr);
        printed = true;
      }
      for (int i = 0; i < 5 && !stop_.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (printed) fprintf(stderr, "\r\033[K");
  });
}

Progress::~Progress() { Stop(); }

void Progress::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

}  // namespace ferry::cli

namespace ferry::cli {

nlohmann::json ResourcesJson(const ResourceUsage& u) {
  nlohmann::json j;
  j["minor-faults"] = u.minor_faults;
  j["major-faults"] = u.major_faults;
  j["peak-rss"] = u.peak_rss;
  j["rss-at-start"] = u.rss_at_start;
  j["cpu-seconds"] = u.cpu_seconds;
  return j;
}

std::string ResourcesLine(const ResourceUsage& u, uint64_t guest_bytes) {
  char buf[256];
  const double gib = guest_bytes / 1073741824.0;
  snprintf(buf, sizeof(buf), "  host: %llu minor faults (%.0f per GiB of guest RAM), peak RSS %s, %.2f s CPU\n",
           (unsigned long long)u.minor_faults, gib > 0 ? u.minor_faults / gib : 0.0, FormatBytes(u.peak_rss).c_str(),
           u.cpu_seconds);
  return buf;
}

}  // namespace ferry::cli
