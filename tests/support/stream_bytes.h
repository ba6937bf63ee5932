// Hand-built migration streams for the parser tests: a byte vector with
// chained big-endian writers and the common framing pieces.
//
//   struct Bytes : test::StreamBytesBase<Bytes> {};
//   Bytes s;
//   s.header("none").start(1, "ram", 4).ram_setup(kRam).footer(1);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/endian.h"
#include "core/wire.h"

namespace ferry::test {

template <class Self>
struct StreamBytesBase {
  std::vector<uint8_t> b;

  Self& u8(uint8_t v) { b.push_back(v); return self(); }
  Self& be16(uint16_t v) { return put<2>(v, StoreBe16); }
  Self& be32(uint32_t v) { return put<4>(v, StoreBe32); }
  Self& be64(uint64_t v) { return put<8>(v, StoreBe64); }
  // A length byte and the string (idstrs, block names).
  Self& name(const std::string& s) { u8(static_cast<uint8_t>(s.size())); return raw(s.data(), s.size()); }
  Self& raw(const void* p, size_t n) {
    auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
    return self();
  }
  // Stream header and a configuration section naming `machine`, without subsections.
  Self& header(const std::string& machine) {
    be32(wire::kMagic).be32(wire::kVersion).u8(wire::kConfiguration).be32(static_cast<uint32_t>(machine.size()));
    return raw(machine.data(), machine.size());
  }
  Self& start(uint32_t id, const std::string& idstr, uint32_t version, uint8_t type = wire::kSectionStart) {
    return u8(type).be32(id).name(idstr).be32(0).be32(version);
  }
  Self& footer(uint32_t id) { return u8(wire::kFooter).be32(id); }
  Self& subsection(const std::string& n, uint32_t version = 1) { return u8(wire::kSubsection).name(n).be32(version); }
  Self& command(uint16_t cmd, const std::vector<uint8_t>& payload = {}) {
    u8(wire::kCommand).be16(cmd).be16(static_cast<uint16_t>(payload.size()));
    return raw(payload.data(), payload.size());
  }
  // The RAM section's setup records for one block of `size` bytes, then EOS.
  Self& ram_setup(uint64_t size, const std::string& block = "ram") {
    return be64(size | wire::kRamMemSize).name(block).be64(size).be64(wire::kRamEos);
  }

 private:
  Self& self() { return static_cast<Self&>(*this); }
  template <size_t N, class T, class Store>
  Self& put(T v, Store store) {
    uint8_t tmp[N];
    store(tmp, v);
    return raw(tmp, N);
  }
};

}  // namespace ferry::test
