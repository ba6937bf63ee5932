#include "core/endian.h"
#include "core/format.h"
#include "file/inspect.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <iterator>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/unique_fd.h"
#include "core/wire.h"

namespace ferry {
namespace {

constexpr uint64_t kPage = 4096;
constexpr size_t kMapHeaderSize = 28;
// The VM description is searched for in at most this much JSON at the end of
// the file; descriptions nest structs and subsections at most this deep.
constexpr uint64_t kVmdescMaxBytes = 16 << 20;
constexpr int kVmdescMaxDepth = 64;

using Json = nlohmann::json;

// Configuration subsections (vmstate subsections of the configuration
// section, version 1 each):
//   capabilities:     be32 count, count x (u8 len, name)   with mapped-ram or x-ignore-shared on
//   uuid:             16 bytes                             with validate-uuid on
//   target-page-bits: be32                                 targets with variable page sizes
constexpr const char* kCapabilitiesSubsection = "configuration/capabilities";
constexpr const char* kUuidSubsection = "configuration/uuid";
constexpr const char* kPageBitsSubsection = "configuration/target-page-bits";
// QEMU has a few dozen capabilities; a longer list is corruption.
constexpr uint32_t kMaxCapabilities = 256;

// Command sections (0x08): be16 command, be16 payload length, payload.
// QEMU 10's numbering; `len` is the payload length the command takes, -1
// when it varies (then `shape` says how it is checked).
enum class PayloadShape { kFixed, kAdvise, kDiscard, kRecvBitmap };
// How each command's payload is checked beyond wire::kCommands' length.
constexpr uint16_t kCmdPackaged = 7;  // be32 length of a package that follows the command
constexpr PayloadShape kCommandShapes[wire::kCommandCount] = {
    PayloadShape::kFixed,  PayloadShape::kFixed, PayloadShape::kFixed,   PayloadShape::kAdvise,
    PayloadShape::kFixed,  PayloadShape::kFixed, PayloadShape::kDiscard, PayloadShape::kFixed,
    PayloadShape::kFixed,  PayloadShape::kFixed, PayloadShape::kRecvBitmap, PayloadShape::kFixed,
};

// Bounded reads at a cursor; every failure sets `error` and returns false.
class Cursor {
 public:
  Cursor(int fd, uint64_t size, uint64_t pos) : fd_(fd), size_(size), pos_(pos) {}
  uint64_t pos() const { return pos_; }
  uint64_t size() const { return size_; }
  uint64_t left() const { return pos_ < size_ ? size_ - pos_ : 0; }
  void Seek(uint64_t pos) { pos_ = pos; }

  bool Read(void* buf, size_t n, const std::string& what, std::string* error) {
    if (n > left()) {
      *error = "file ends at " + std::to_string(size_) + " in the middle of " + what + " (at offset " +
               std::to_string(pos_) + ")";
      return false;
    }
    size_t done = 0;
    while (done < n) {
      ssize_t r = pread(fd_, static_cast<uint8_t*>(buf) + done, n - done, static_cast<off_t>(pos_ + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        *error = "read error at offset " + std::to_string(pos_ + done) + " reading " + what;
        return false;
      }
      done += static_cast<size_t>(r);
    }
    pos_ += n;
    return true;
  }
  bool Skip(uint64_t n, const std::string& what, std::string* error) {
    if (n > left()) {
      *error = "file ends at " + std::to_string(size_) + " in the middle of " + what + " (at offset " +
               std::to_string(pos_) + ", " + std::to_string(n) + " bytes expected)";
      return false;
    }
    pos_ += n;
    return true;
  }
  bool U8(uint8_t* v, const std::string& what, std::string* e) { return Read(v, 1, what, e); }
  bool Be32(uint32_t* v, const std::string& what, std::string* e) {
    uint8_t b[4];
    if (!Read(b, 4, what, e)) return false;
    *v = LoadBe32(b);
    return true;
  }
  bool Be64(uint64_t* v, const std::string& what, std::string* e) {
    uint8_t b[8];
    if (!Read(b, 8, what, e)) return false;
    *v = LoadBe64(b);
    return true;
  }
  bool Name(std::string* name, const std::string& what, std::string* e) {
    uint8_t len = 0;
    if (!U8(&len, what + " name length", e)) return false;
    name->assign(len, '\0');
    return Read(name->data(), len, what + " name", e);
  }

 private:
  int fd_;
  uint64_t size_;
  uint64_t pos_;
};

// At most `max` bytes of `s` with every byte outside printable ASCII as \xNN
// (parser messages quote the bytes they stopped at).
std::string Printable(const std::string& s, size_t max) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += d[c >> 4];
      out += d[c & 15];
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

// Names in a stream (machine, sections, RAM blocks, capabilities,
// subsections) are printable ASCII in every QEMU and in ferry; anything else
// is corruption. Returns the problem ("" if none), naming `what` and `at`.
std::string NameProblem(const std::string& what, const std::string& name, uint64_t at, bool may_be_empty = false) {
  const std::string where = " at offset " + std::to_string(at);
  if (name.empty()) return may_be_empty ? "" : what + where + " is empty";
  for (char ch : name) {
    const auto c = static_cast<uint8_t>(ch);
    if (c < 0x20 || c >= 0x7f) {
      return what + " '" + Printable(name, 64) + "'" + where + " is not printable text (corrupted?)";
    }
  }
  return "";
}

// A member that is a non-negative integer, if there is one.
std::optional<uint64_t> UnsignedMember(const Json& o, const char* key) {
  if (!o.is_object()) return std::nullopt;
  auto it = o.find(key);
  if (it == o.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<uint64_t>();
}

// A member that is a string, or "" (a description's names are never empty).
std::string StringMember(const Json& o, const char* key) {
  if (!o.is_object()) return "";
  auto it = o.find(key);
  if (it == o.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

// The VM description (QEMU_VM_VMDESCRIPTION after EOF), found from the end of
// the file and parsed the first time a section needs it.
struct VmDescription {
  bool tried = false;
  std::string error;    // why it cannot be used; "" when it can
  uint64_t offset = 0;  // file offset of its 0x06 byte
  Json doc;
  // (idstr, instance id) -> the device's entry in doc["devices"].
  std::map<std::pair<std::string, uint32_t>, const Json*> devices;
};

class Walker {
 public:
  Walker(Cursor& c, InspectReport& r) : c_(c), r_(r) {}

  void Run() {
    std::string& e = r_.problem;
    if (!c_.Be32(&r_.magic, "the stream header", &e) || !c_.Be32(&r_.version, "the stream header", &e)) return;
    if (r_.magic != wire::kMagic) {
      e = "not a migration stream: magic " + Hex(r_.magic) + " (expected 0x5145564d 'QEVM')";
      return;
    }
    if (r_.version != wire::kVersion) {
      e = "stream version " + std::to_string(r_.version) + " (ferry knows version 3)";
      return;
    }
    r_.header_ok = true;
    while (true) {
      const uint64_t at = c_.pos();
      uint8_t type = 0;
      if (!c_.U8(&type, "a section type", &e)) return;
      switch (type) {
        case wire::kConfiguration: {
          uint32_t len = 0;
          if (!c_.Be32(&len, "the configuration section", &e)) return;
          if (len > 256) {
            e = "configuration machine name length " + std::to_string(len) + " at offset " + std::to_string(at);
            return;
          }
          r_.machine.assign(len, '\0');
          if (!c_.Read(r_.machine.data(), len, "the configuration section", &e)) return;
          r_.has_configuration = true;
          e = NameProblem("the configuration's machine name", r_.machine, at + 5, /*may_be_empty=*/true);
          if (!e.empty()) return;
          if (!ConfigurationSubsections(at)) return;
          break;
        }
        case wire::kCommand:
          if (!Command(at)) return;
          break;
        case wire::kSectionStart:
        case wire::kSectionFull:
        case wire::kSectionPart:
        case wire::kSectionEnd:
          if (!Section(type, at)) return;
          break;
        case wire::kSectionEof:
          r_.eof_present = true;
          Vmdesc();
          r_.stream_end = c_.pos();
          if (e.empty() && r_.vmdesc_present && c_.left() > 0) {
            r_.trailing_bytes = c_.left();
            e = std::to_string(c_.left()) + " trailing bytes after the VM description (from offset " +
                std::to_string(c_.pos()) + " to the end of the file): not part of the stream";
          }
          return;
        default:
          e = "unknown section type " + Hex(type) + " at offset " + std::to_string(at);
          return;
      }
    }
  }

 private:

  // ---- Configuration subsections --------------------------------------

  // After the machine name: any number of subsections (0x05, u8 length,
  // name, be32 version), each of a kind inspect knows. They end where the
  // next byte is not 0x05, which is never a section type. `config_at`: the
  // offset of the configuration section.
  bool ConfigurationSubsections(uint64_t config_at) {
    std::string& e = r_.problem;
    while (true) {
      const uint64_t at = c_.pos();
      uint8_t b = 0;
      std::string unused;
      if (c_.left() == 0 || !c_.U8(&b, "", &unused) || b != wire::kSubsection) {
        c_.Seek(at);
        return true;
      }
      std::string name;
      uint32_t version = 0;
      if (!c_.Name(&name, "a configuration subsection", &e) ||
          !c_.Be32(&version, "configuration subsection '" + Printable(name, 64) + "'", &e)) {
        return false;
      }
      e = NameProblem("a configuration subsection's name", name, at);
      if (!e.empty()) return false;
      const std::string where = "configuration subsection '" + Printable(name, 64) + "' at offset " + std::to_string(at);
      if (std::find(r_.configuration_subsections.begin(), r_.configuration_subsections.end(), name) !=
          r_.configuration_subsections.end()) {
        e = where + " is the second one of that name";
        return false;
      }
      if (name != kCapabilitiesSubsection && name != kUuidSubsection && name != kPageBitsSubsection) {
        if (!DescribedConfigurationSubsection(name, version, at, config_at)) return false;
        r_.configuration_subsections.push_back(name);
        continue;
      }
      if (version != 1) {
        e = where + " has version " + std::to_string(version) + " (inspect knows version 1)";
        return false;
      }
      r_.configuration_subsections.push_back(name);
      const std::string what = "configuration subsection '" + name + "'";
      if (name == kCapabilitiesSubsection) {
        uint32_t count = 0;
        if (!c_.Be32(&count, what, &e)) return false;
        if (count > kMaxCapabilities) {
          e = where + " lists " + std::to_string(count) + " capabilities (at most " +
              std::to_string(kMaxCapabilities) + " expected)";
          return false;
        }
        for (uint32_t i = 0; i < count; ++i) {
          std::string cap;
          if (!c_.Name(&cap, what + "'s capability", &e)) return false;
          if (cap.empty()) {
            e = where + ": capability " + std::to_string(i) + " has an empty name";
            return false;
          }
          e = NameProblem(where + ": capability " + std::to_string(i), cap, at);
          if (!e.empty()) return false;
          r_.capabilities.push_back(std::move(cap));
        }
        r_.has_capabilities = true;
      } else if (name == kUuidSubsection) {
        uint8_t u[16];
        if (!c_.Read(u, sizeof(u), what, &e)) return false;
        r_.uuid = FormatUuid(u);
      } else {
        if (!c_.Be32(&r_.target_page_bits, what, &e)) return false;
      }
    }
  }

  // A configuration subsection inspect does not know, walked with the
  // configuration's entry in the VM description (QEMU >= 10 describes the
  // configuration there, next to "devices").
  bool DescribedConfigurationSubsection(const std::string& name, uint32_t version, uint64_t at,
                                        uint64_t config_at) {
    InspectSection conf;
    conf.idstr = "configuration";
    conf.offset = config_at;
    const std::string unknown = "subsection '" + Printable(name, 64) + "' at offset " + std::to_string(at) +
                                " is unknown to inspect (it knows '" + kCapabilitiesSubsection + "', '" +
                                kUuidSubsection + "' and '" + kPageBitsSubsection + "') and ";
    if (!vd_.tried) LocateVmdesc();
    if (!vd_.error.empty()) return CannotWalk(conf, unknown + vd_.error);
    const Json* sub = nullptr;
    auto cfg = vd_.doc.find("configuration");
    if (cfg != vd_.doc.end() && cfg->is_object()) {
      auto subs = cfg->find("subsections");
      if (subs != cfg->end() && subs->is_array()) {
        for (const Json& x : *subs) {
          if (StringMember(x, "vmsd_name") == name) sub = &x;
        }
      }
    }
    if (sub == nullptr) {
      return CannotWalk(conf, unknown + "the VM description at offset " + std::to_string(vd_.offset) +
                                  " does not describe it");
    }
    const std::optional<uint64_t> want = UnsignedMember(*sub, "version");
    if (want && *want != version) {
      return CannotWalk(conf, "subsection '" + name + "' at offset " + std::to_string(at) + " has version " +
                                  std::to_string(version) + " but the VM description describes version " +
                                  std::to_string(*want));
    }
    const uint64_t limit = vd_.offset > 0 ? vd_.offset - 1 : 0;
    try {
      return WalkVmsd(*sub, conf, name, 1, limit);
    } catch (const std::exception& ex) {
      return CannotWalk(conf, "its VM description entry is malformed (" + Printable(ex.what(), 200) + ")");
    }
  }

  bool HasCapability(const char* name) const {
    return std::find(r_.capabilities.begin(), r_.capabilities.end(), name) != r_.capabilities.end();
  }

  static std::string FormatUuid(const uint8_t* u) {
    static const char* d = "0123456789abcdef";
    std::string s;
    for (int i = 0; i < 16; ++i) {
      if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
      s += d[u[i] >> 4];
      s += d[u[i] & 15];
    }
    return s;
  }

  // ---- Command sections -----------------------------------------------

  // 0x08, be16 command, be16 payload length, payload. Listed as a section
  // of type wire::kCommand named after the command. Only commands of a known
  // number with a payload of the length that command takes pass. The
  // package after a PACKAGED command (postcopy's bundle of device state) is
  // skipped by its length, not walked.
  bool Command(uint64_t at) {
    std::string& e = r_.problem;
    uint8_t h[4];
    if (!c_.Read(h, sizeof(h), "a command section header", &e)) return false;
    InspectSection s;
    s.type = wire::kCommand;
    s.offset = at;
    s.id = (uint32_t{h[0]} << 8) | h[1];
    s.command_len = (uint32_t{h[2]} << 8) | h[3];
    const std::string where = " at offset " + std::to_string(at);
    if (s.id >= wire::kCommandCount || wire::kCommands[s.id].name == nullptr) {
      e = "unknown command " + std::to_string(s.id) + " (payload " + std::to_string(s.command_len) + " bytes)" + where;
      return false;
    }
    s.idstr = wire::kCommands[s.id].name;
    std::string payload(s.command_len, '\0');
    if (!c_.Read(payload.data(), payload.size(), "command " + s.idstr + where, &e)) return false;
    const std::string bad = CommandPayloadProblem(wire::kCommands[s.id].length, kCommandShapes[s.id], payload);
    if (!bad.empty()) {
      e = "command " + s.idstr + where + " is corrupt: " + bad;
      return false;
    }
    if (s.id == kCmdPackaged) {
      const uint32_t package = LoadBe32(reinterpret_cast<const uint8_t*>(payload.data()));
      if (!c_.Skip(package, "the package of command PACKAGED" + where, &e)) return false;
    }
    s.size = c_.pos() - at;
    r_.sections.push_back(std::move(s));
    return true;
  }

  // What is wrong with a command's payload ("" if nothing).
  static std::string CommandPayloadProblem(int length, PayloadShape shape, const std::string& p) {
    const size_t n = p.size();
    const std::string got = "payload of " + std::to_string(n) + " bytes";
    if (length >= 0) {
      return n == static_cast<size_t>(length) ? "" : got + ", it takes " + std::to_string(length);
    }
    const auto* b = reinterpret_cast<const uint8_t*>(p.data());
    switch (shape) {
      case PayloadShape::kAdvise:  // nothing, or be64 page size, be64 target page size
        return n == 0 || n == 16 ? "" : got + ", it takes 0 or 16";
      case PayloadShape::kDiscard: {  // u8 version 0, u8 len, block name, (be64 start, be64 length)*
        if (n < 2 || b[0] != 0) return got + (n < 2 ? " (too short)" : ", version " + std::to_string(b[0]) + " (not 0)");
        if (2u + b[1] > n || (n - 2 - b[1]) % 16 != 0) {
          return got + " does not hold a block name of " + std::to_string(b[1]) + " bytes and whole 16-byte ranges";
        }
        return "";
      }
      case PayloadShape::kRecvBitmap:  // u8 len, block name
        return n >= 1 && n == 1u + b[0] ? "" : got + " is not a length byte and a block name of that length";
      case PayloadShape::kFixed:
        break;
    }
    return "";
  }

  void Vmdesc() {
    std::string unused;
    uint8_t type = 0;
    if (c_.left() == 0) return;
    const uint64_t at = c_.pos();
    if (!c_.U8(&type, "the VM description", &unused)) return;
    if (type != wire::kVmDescription) {
      r_.problem = "unexpected byte " + Hex(type) + " after EOF (expected the VM description 0x06)";
      return;
    }
    uint32_t len = 0;
    if (!c_.Be32(&len, "the VM description length", &r_.problem)) return;
    if (!c_.Skip(len, "the VM description", &r_.problem)) return;
    r_.vmdesc_present = true;
    r_.vmdesc_offset = at;
    r_.vmdesc_bytes = len;
    if (vd_.tried && vd_.error.empty() && vd_.offset != at) {
      r_.problem = "the VM description after EOF is at offset " + std::to_string(at) +
                   ", but the one the device sections were walked with is at offset " + std::to_string(vd_.offset);
    }
  }

  bool Section(uint8_t type, uint64_t at) {
    std::string& e = r_.problem;
    InspectSection s;
    s.type = type;
    s.offset = at;
    if (!c_.Be32(&s.id, "a section header", &e)) return false;
    if (type == wire::kSectionStart || type == wire::kSectionFull) {
      if (!c_.Name(&s.idstr, "a section header", &e) || !c_.Be32(&s.instance, "a section header", &e) ||
          !c_.Be32(&s.version, "a section header", &e)) {
        return false;
      }
      e = NameProblem("the name of section id " + std::to_string(s.id), s.idstr, at);
      if (!e.empty()) return false;
      if (ids_.count(s.id) && ids_[s.id] != s.idstr) {
        e = "section id " + std::to_string(s.id) + " names '" + s.idstr + "' but was '" + ids_[s.id] + "' before";
        return false;
      }
      ids_[s.id] = s.idstr;
    } else {
      auto it = ids_.find(s.id);
      if (it == ids_.end()) {
        e = "section at offset " + std::to_string(at) + " continues unknown section id " + std::to_string(s.id);
        return false;
      }
      s.idstr = it->second;
    }
    r_.sections.push_back(s);
    InspectSection& sec = r_.sections.back();
    bool ok = false;
    if (sec.idstr == "ram") {
      ok = Ram(sec);
      if (ok && type == wire::kSectionEnd) r_.ram_end = true;
    } else if (sec.idstr == wire::kVerifyIdstr) {
      ok = Verify(sec.version);
      if (ok) r_.verify_present = true;
    } else if (sec.idstr == "timer") {
      ok = c_.Skip(24, "section 'timer'", &e);
    } else if (sec.idstr == "globalstate") {
      uint32_t size = 0;
      ok = c_.Be32(&size, "section 'globalstate'", &e) && c_.Skip(100, "section 'globalstate'", &e);
    } else {
      ok = Described(sec);
    }
    if (!ok || !Footer(sec)) return false;
    sec.size = c_.pos() - sec.offset;
    return true;
  }

  // ---- Sections walked with the VM description ----------------------------

  // Finds the VM description at the end of the file: a 0x06 byte followed
  // by a be32 length that reaches exactly the end of the file and a '{'.
  // Valid JSON holds no raw 0x06 byte, so the first match scanning backwards
  // from the end is the real one.
  void LocateVmdesc() {
    vd_.tried = true;
    const uint64_t start = r_.offset + 8;  // after the stream header
    const uint64_t end = c_.size();
    const std::string none = "no VM description (0x06, be32 length, at most " + std::to_string(kVmdescMaxBytes) +
                             " bytes of JSON) ends the file";
    if (end < start + 6) {
      vd_.error = none;
      return;
    }
    const uint64_t span = std::min<uint64_t>(end - start, kVmdescMaxBytes + 5);
    std::string tail(static_cast<size_t>(span), '\0');
    Cursor t = c_;
    t.Seek(end - span);
    std::string err;
    if (!t.Read(tail.data(), tail.size(), "the end of the file", &err)) {
      vd_.error = err;
      return;
    }
    const auto* b = reinterpret_cast<const uint8_t*>(tail.data());
    std::optional<size_t> found;
    for (size_t p = tail.size() - 6;; --p) {
      if (b[p] == wire::kVmDescription && b[p + 5] == '{' && LoadBe32(b + p + 1) == tail.size() - p - 5) {
        found = p;
        break;
      }
      if (p == 0) break;
    }
    if (!found) {
      vd_.error = none;
      return;
    }
    vd_.offset = end - span + *found;
    const std::string where = "the VM description at offset " + std::to_string(vd_.offset);
    try {
      vd_.doc = Json::parse(tail.begin() + static_cast<std::ptrdiff_t>(*found + 5), tail.end());
    } catch (const std::exception& ex) {
      vd_.error = where + " is not valid JSON (" + Printable(ex.what(), 200) + ")";
      return;
    }
    auto devs = vd_.doc.is_object() ? vd_.doc.find("devices") : vd_.doc.end();
    if (!vd_.doc.is_object() || devs == vd_.doc.end() || !devs->is_array()) {
      vd_.error = where + " has no \"devices\" list";
      return;
    }
    for (const Json& d : *devs) {
      const std::string name = StringMember(d, "name");
      const std::optional<uint64_t> instance = UnsignedMember(d, "instance_id");
      if (name.empty() || !instance || *instance > UINT32_MAX) continue;
      vd_.devices.emplace(std::make_pair(name, static_cast<uint32_t>(*instance)), &d);
    }
  }

  // Sets the problem for an unknown section that cannot be walked; false.
  bool CannotWalk(const InspectSection& s, const std::string& why) {
    r_.problem = "section '" + s.idstr + "' at offset " + std::to_string(s.offset) + ": " + why +
                 ", cannot walk past it";
    return false;
  }

  // A device section inspect has no built-in knowledge of: its state is
  // skipped by the sizes in its VM description entry.
  bool Described(InspectSection& s) {
    const std::string unknown = "its contents are unknown to inspect and ";
    if (s.type != wire::kSectionFull) {
      return CannotWalk(s, unknown + "the VM description only describes full (0x04) device sections");
    }
    if (!vd_.tried) LocateVmdesc();
    if (!vd_.error.empty()) return CannotWalk(s, unknown + vd_.error);
    auto it = vd_.devices.find({s.idstr, s.instance});
    if (it == vd_.devices.end()) {
      return CannotWalk(s, unknown + "the VM description at offset " + std::to_string(vd_.offset) +
                               " does not list it with instance id " + std::to_string(s.instance));
    }
    const Json& dev = *it->second;
    const std::optional<uint64_t> version = UnsignedMember(dev, "version");
    if (version && *version != s.version) {
      return CannotWalk(s, "the section has version " + std::to_string(s.version) +
                               " but the VM description describes version " + std::to_string(*version));
    }
    auto fields = dev.find("fields");
    if (fields == dev.end() || !fields->is_array()) {
      return CannotWalk(s, unknown + "the VM description lists it without its fields");
    }
    // Device state ends before the EOF byte in front of the VM description.
    const uint64_t limit = vd_.offset > 0 ? vd_.offset - 1 : 0;
    try {
      if (!WalkVmsd(dev, s, s.idstr, 0, limit)) return false;
    } catch (const std::exception& ex) {
      return CannotWalk(s, "its VM description entry is malformed (" + Printable(ex.what(), 200) + ")");
    }
    // A subsection the description does not know would otherwise be
    // reported as a bad footer: name it.
    const uint64_t at = c_.pos();
    std::string unused, name;
    uint8_t b = 0;
    if (c_.U8(&b, "", &unused) && b == wire::kSubsection && c_.Name(&name, "", &unused)) {
      return CannotWalk(s, "subsection '" + name + "' at offset " + std::to_string(at) +
                               " is not in the VM description (or a size before it is wrong)");
    }
    c_.Seek(at);
    s.from_vmdesc = true;
    return true;
  }

  // Walks one VMState description (a device, a struct or a subsection) from
  // the cursor: its fields by their sizes, then its subsections, each one
  // present only if the stream names it next. Nothing may reach past
  // `limit`. `path` names the description in messages ("cpu.env/cpu/xsave").
  bool WalkVmsd(const Json& desc, InspectSection& s, const std::string& path, int depth, uint64_t limit) {
    if (depth > kVmdescMaxDepth) {
      return CannotWalk(s, "the VM description nests '" + path + "' deeper than " + std::to_string(kVmdescMaxDepth) +
                               " levels");
    }
    auto fields = desc.find("fields");
    if (fields != desc.end() && !fields->is_array()) {
      return CannotWalk(s, "the VM description's \"fields\" of '" + path + "' is not a list");
    }
    if (fields != desc.end()) {
      for (const Json& f : *fields) {
        std::string name = StringMember(f, "name");
        if (name.empty()) name = "?";
        const std::string fpath = path + "." + name;
        const std::optional<uint64_t> size = UnsignedMember(f, "size");
        uint64_t count = 1;  // a compressed array: the entry describes its first element
        if (f.is_object() && f.contains("array_len")) {
          const std::optional<uint64_t> n = UnsignedMember(f, "array_len");
          if (!n) return CannotWalk(s, "the VM description gives field '" + fpath + "' an array_len that is not a count");
          count = *n;
        }
        if (count == 0) continue;
        auto st = f.is_object() ? f.find("struct") : f.end();
        uint64_t element = 0;
        if (f.is_object() && st != f.end() && st->is_object()) {
          // A struct: its own description says what its first element holds;
          // its size, when given, must be what that walk covered.
          const uint64_t from = c_.pos();
          if (!WalkVmsd(*st, s, fpath, depth + 1, limit)) return false;
          element = c_.pos() - from;
          if (size && element != *size) {
            return CannotWalk(s, "struct field '" + fpath + "' at offset " + std::to_string(from) + " takes " +
                                     std::to_string(element) + " bytes by its description but its size is " +
                                     std::to_string(*size));
          }
          --count;
        } else if (size) {
          element = *size;
        } else {
          return CannotWalk(s, "the VM description gives no size for field '" + fpath + "'");
        }
        const uint64_t room = limit > c_.pos() ? limit - c_.pos() : 0;
        if (count != 0 && element > room / count) {
          return CannotWalk(s, "field '" + fpath + "' (" + (count > 1 ? std::to_string(count) + " x " : "") +
                                   std::to_string(element) + " bytes at offset " + std::to_string(c_.pos()) +
                                   ") runs past the end of the device state at offset " + std::to_string(limit) +
                                   ", where the VM description begins");
        }
        c_.Seek(c_.pos() + element * count);
      }
    }
    auto subs = desc.find("subsections");
    if (subs == desc.end()) return true;
    if (!subs->is_array()) return CannotWalk(s, "the VM description's \"subsections\" of '" + path + "' is not a list");
    for (const Json& sub : *subs) {
      const std::string name = StringMember(sub, "vmsd_name");
      if (name.empty()) return CannotWalk(s, "the VM description lists a subsection of '" + path + "' without a vmsd_name");
      // Present only if the stream names it here: 0x05, u8 length, name, be32 version.
      const uint64_t at = c_.pos();
      std::string unused, got;
      uint8_t b = 0;
      const bool present = at + 2 + name.size() + 4 <= limit && c_.U8(&b, "", &unused) &&
                           b == wire::kSubsection && c_.Name(&got, "", &unused) && got == name;
      if (!present) {
        c_.Seek(at);
        continue;
      }
      uint32_t version = 0;
      if (!c_.Be32(&version, "subsection '" + name + "'", &r_.problem)) return false;
      const std::optional<uint64_t> want = UnsignedMember(sub, "version");
      if (want && *want != version) {
        return CannotWalk(s, "subsection '" + name + "' at offset " + std::to_string(at) + " has version " +
                                 std::to_string(version) + " but the VM description describes version " +
                                 std::to_string(*want));
      }
      ++s.subsections;
      if (!WalkVmsd(sub, s, path + "/" + name, depth + 1, limit)) return false;
    }
    return true;
  }

  bool Footer(const InspectSection& s) {
    std::string& e = r_.problem;
    uint8_t b = 0;
    if (!c_.U8(&b, "the footer of section '" + s.idstr + "'", &e)) return false;
    if (b != wire::kFooter) {
      e = "section '" + s.idstr + "' (offset " + std::to_string(s.offset) + ") ends with " + Hex(b) +
          " at offset " + std::to_string(c_.pos() - 1) + ", not its footer 0x7e";
      return false;
    }
    uint32_t id = 0;
    if (!c_.Be32(&id, "the footer of section '" + s.idstr + "'", &e)) return false;
    if (id != s.id) {
      e = "footer at offset " + std::to_string(c_.pos() - 5) + " closes section id " + std::to_string(id) +
          ", expected " + std::to_string(s.id);
      return false;
    }
    return true;
  }

  bool Ram(InspectSection& s) {
    std::string& e = r_.problem;
    // CONTINUE refers to the previous record's block, across sections too
    // (QEMU does not name the block again at a section start).
    std::optional<size_t>& current = current_block_;
    while (true) {
      const uint64_t at = c_.pos();
      uint64_t v = 0;
      if (!c_.Be64(&v, "a RAM record", &e)) return false;
      const uint64_t flags = v & wire::kRamFlagMask;
      const uint64_t addr = v & ~wire::kRamFlagMask;
      const uint64_t kind = flags & ~wire::kRamContinue;
      const std::string where = " at offset " + std::to_string(at);
      if (kind == wire::kRamEos) return true;
      if (kind == wire::kRamMemSize) {
        if (r_.ram_setup) {
          e = "a second RAM block list" + where;
          return false;
        }
        if (!BlockList(addr)) return false;
        r_.ram_setup = true;
        continue;
      }
      if (kind == wire::kRamMultifdFlush) continue;
      if (kind != wire::kRamPage && kind != wire::kRamZero && kind != wire::kRamZeroRun &&
          kind != wire::kRamPageRun) {
        e = "RAM record with flags " + Hex(flags) + where +
            " (not PAGE, ZERO, ferry's ZERO_RUN or PAGE_RUN, MEM_SIZE, EOS or MULTIFD_FLUSH)";
        return false;
      }
      if (!r_.ram_setup) {
        e = "page record before the RAM block list" + where;
        return false;
      }
      if (flags & wire::kRamContinue) {
        if (!current) {
          e = "CONTINUE record with no block before it" + where;
          return false;
        }
      } else {
        std::string name;
        if (!c_.Name(&name, "a RAM record's block", &e)) return false;
        current.reset();
        for (size_t i = 0; i < r_.blocks.size(); ++i) {
          if (r_.blocks[i].name == name) current = i;
        }
        if (!current) {
          e = "RAM record for unknown block '" + name + "'" + where;
          return false;
        }
      }
      const InspectBlock& block = r_.blocks[*current];
      if (addr >= block.size) {
        e = "page offset " + Hex(addr) + " outside block '" + block.name + "' (" + std::to_string(block.size) +
            " bytes)" + where;
        return false;
      }
      if (kind == wire::kRamPage) {
        if (!c_.Skip(kPage, "a page's data", &e)) return false;
        ++s.page_records;
      } else if (kind == wire::kRamPageRun || kind == wire::kRamZeroRun) {
        const std::string what = kind == wire::kRamPageRun ? "page-run" : "zero-run";
        uint64_t count = 0;
        if (!c_.Be64(&count, "a " + what + " record", &e)) return false;
        if (count == 0 || count > (block.size - addr) / kPage) {
          e = what + " record of " + std::to_string(count) + " pages at " + Hex(addr) + " outside block '" +
              block.name + "'" + where;
          return false;
        }
        if (kind == wire::kRamZeroRun) {
          s.zero_records += count;
        } else {
          if (!c_.Skip(count * kPage, "a page run's data", &e)) return false;
          s.page_records += count;
        }
      } else {
        uint8_t fill = 0;
        if (!c_.U8(&fill, "a zero record", &e)) return false;
        ++s.zero_records;
      }
    }
  }

  bool BlockList(uint64_t total) {
    std::string& e = r_.problem;
    const bool ignore_shared = HasCapability("x-ignore-shared");
    uint64_t sum = 0;
    while (sum < total) {
      InspectBlock b;
      const uint64_t at = c_.pos();
      if (!c_.Name(&b.name, "the RAM block list", &e) || !c_.Be64(&b.size, "the RAM block list", &e)) return false;
      e = NameProblem("RAM block name", b.name, at);
      if (!e.empty()) return false;
      if (b.size == 0 || b.size % kPage != 0 || b.size > total - sum) {
        e = "RAM block '" + b.name + "' size " + std::to_string(b.size) + " does not fit the announced total " +
            std::to_string(total);
        return false;
      }
      sum += b.size;
      if (ignore_shared) {
        if (!c_.Be64(&b.addr, "block '" + b.name + "''s address (x-ignore-shared)", &e)) return false;
        b.has_addr = true;
      }
      if (!MaybeMappedRam(b)) return false;
      r_.blocks.push_back(std::move(b));
    }
    return true;
  }

  // After a block's entry: a mapped-ram header if the file is mapped-ram.
  bool MaybeMappedRam(InspectBlock& b) {
    std::string& e = r_.problem;
    const uint64_t at = c_.pos();
    uint8_t h[kMapHeaderSize];
    std::string unused;
    bool looks = false;
    uint64_t bitmap = 0, pages = 0, page_size = 0;
    uint32_t version = 0;
    if (c_.left() >= kMapHeaderSize) {
      c_.Read(h, kMapHeaderSize, "", &unused);
      c_.Seek(at);
      version = LoadBe32(h);
      page_size = LoadBe64(h + 4);
      bitmap = LoadBe64(h + 12);
      pages = LoadBe64(h + 20);
      looks = version == 1 && page_size == kPage && bitmap >= at + kMapHeaderSize && bitmap < c_.size() &&
              pages > bitmap && pages <= c_.size();
    }
    // The configuration's capabilities, when sent, say whether the file is
    // mapped-ram; without them the first block's entry decides.
    if (r_.has_capabilities && looks != HasCapability("mapped-ram")) {
      e = "block '" + b.name + "' at offset " + std::to_string(at) +
          (looks ? " has a mapped-ram header but the configuration's capabilities do not list mapped-ram"
                 : " has no mapped-ram header (or one pointing outside the file) though the configuration's "
                   "capabilities list mapped-ram");
      return false;
    }
    if (!r_.blocks.empty() && looks != r_.mapped_ram) {
      e = "block '" + b.name + "' at offset " + std::to_string(at) +
          (looks ? " has a mapped-ram header but the blocks before it do not"
                 : " has no mapped-ram header (or one pointing outside the file) though the blocks before it do");
      return false;
    }
    if (!looks) return true;
    r_.mapped_ram = true;
    b.mapped_ram = true;
    b.header_offset = at;
    b.version = version;
    b.page_size = page_size;
    b.bitmap_offset = bitmap;
    b.pages_offset = pages;
    const uint64_t npages = b.size / kPage;
    const uint64_t bitmap_bytes = (npages + 63) / 64 * 8;
    if (bitmap_bytes > pages - bitmap) {
      e = "block '" + b.name + "': its bitmap (" + std::to_string(bitmap_bytes) + " bytes at " +
          std::to_string(bitmap) + ") overlaps its page region at " + std::to_string(pages);
      return false;
    }
    // Count the bits of the bitmap, in bounded chunks.
    c_.Seek(bitmap);
    std::vector<uint8_t> chunk;
    uint64_t left = bitmap_bytes, bit_base = 0;
    while (left > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, 1 << 20));
      chunk.resize(n);
      if (!c_.Read(chunk.data(), n, "block '" + b.name + "''s bitmap", &e)) return false;
      for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t w = 0;
        for (int k = 7; k >= 0; --k) w = (w << 8) | chunk[i + k];  // little-endian words
        if (bit_base + 64 > npages) {
          const uint64_t valid = npages > bit_base ? npages - bit_base : 0;
          if (valid < 64 && (w >> valid) != 0) {
            e = "block '" + b.name + "''s bitmap has bits set beyond its " + std::to_string(npages) + " pages";
            return false;
          }
        }
        b.pages_present += static_cast<uint64_t>(std::popcount(w));
        bit_base += 64;
      }
      left -= n;
    }
    if (b.size > c_.size() - pages) {
      e = "block '" + b.name + "': page region " + std::to_string(pages) + ".." + std::to_string(pages + b.size) +
          " ends past the end of the file (" + std::to_string(c_.size()) + " bytes)";
      return false;
    }
    c_.Seek(pages + b.size);
    return true;
  }

  // Version 1: every page's hash; version 2: runs (core/verify.h). Each
  // block's list ends with its 16-byte digest.
  bool Verify(uint32_t version) {
    std::string& e = r_.problem;
    if (version != 1 && version != 2) {
      e = "verification section version " + std::to_string(version) + " is not one this ferry knows";
      return false;
    }
    uint32_t count = 0;
    if (!c_.Be32(&count, "the verification section", &e)) return false;
    if (count > 4096) {
      e = "verification section lists " + std::to_string(count) + " blocks";
      return false;
    }
    const std::string hashes = "the verification section's page hashes";
    for (uint32_t i = 0; i < count; ++i) {
      std::string name;
      uint64_t size = 0;
      if (!c_.Name(&name, "the verification section", &e) || !c_.Be64(&size, "the verification section", &e)) {
        return false;
      }
      if (version == 1) {
        if (!c_.Skip(size / kPage * 8, hashes, &e)) return false;
      } else {
        for (uint64_t left = size / kPage; left > 0;) {
          uint32_t zeros = 0, listed = 0;
          if (!c_.Be32(&zeros, hashes, &e) || !c_.Be32(&listed, hashes, &e)) return false;
          const uint64_t covered = uint64_t{zeros} + listed;
          if (covered == 0 || covered > left) {
            e = "the verification section's block '" + Printable(name, 64) + "' has a run of " +
                std::to_string(covered) + " page hashes with " + std::to_string(left) + " pages left";
            return false;
          }
          if (!c_.Skip(uint64_t{listed} * 8, hashes, &e)) return false;
          left -= covered;
        }
      }
      if (!c_.Skip(16, "the verification section's digest", &e)) return false;
    }
    return true;
  }

  Cursor& c_;
  InspectReport& r_;
  std::map<uint32_t, std::string> ids_;
  std::optional<size_t> current_block_;
  VmDescription vd_;
};

}  // namespace

std::string InspectReport::Missing() const {
  if (!header_ok) return problem.empty() ? "no stream header" : problem;
  // The first inconsistency says it all: nothing after it can be trusted.
  if (!problem.empty()) return problem + " (the walk stopped at offset " + std::to_string(stream_end) + ")";
  std::string what;
  auto add = [&](const std::string& s) {
    if (!what.empty()) what += "; ";
    what += s;
  };
  if (!ram_setup) add("no RAM block list");
  if (!ram_end) add("no final RAM section (the save did not reach the switch-over)");
  if (!eof_present) add("no EOF marker");
  else if (!vmdesc_present) add("no VM description after EOF");
  return what;
}

std::string InspectReport::Verdict() const {
  std::string m = Missing();
  return m.empty() ? "complete" : "INCOMPLETE: " + m;
}

Result<InspectReport> InspectFile(const std::string& path, uint64_t offset) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open " + path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus("stat " + path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + " is not a regular file");
  InspectReport r;
  r.path = path;
  r.offset = offset;
  r.file_size = static_cast<uint64_t>(st.st_size);
  if (offset > r.file_size) {
    return Status::InvalidArgument(path + " is " + std::to_string(r.file_size) + " bytes, shorter than offset " +
                                   std::to_string(offset));
  }
  Cursor c(fd.get(), r.file_size, offset);
  Walker w(c, r);
  w.Run();
  if (r.stream_end == 0) r.stream_end = c.pos();
  return r;
}

}  // namespace ferry
