#include "rdma/protocol.h"

#include <cstring>

#include "core/endian.h"

namespace ferry::rdma {
namespace {

// Encodes `n` entries of `size` bytes each with `put` as one message whose
// repeat is the entry count.
template <typename T, typename Put>
Result<std::vector<uint8_t>> EncodeEntries(ControlType type, std::span<const T> entries, size_t size,
                                           uint32_t repeat, Put put) {
  if (entries.size() > kMaxCommandsPerMessage || entries.size() * size > kMaxPayload) {
    return Status::InvalidArgument("rdma: " + std::to_string(entries.size()) + " entries do not fit in one " +
                                   ControlTypeName(type) + " message");
  }
  std::vector<uint8_t> payload(entries.size() * size);
  for (size_t i = 0; i < entries.size(); ++i) put(entries[i], payload.data() + i * size);
  return EncodeMessage(type, repeat, payload);
}

// Checks that m is `want` with `m.repeat` entries of `size` bytes (1..4096).
Result<size_t> CountedEntries(const Message& m, ControlType want, size_t size) {
  FERRY_RETURN_IF_ERROR(ExpectType(m, want));
  if (m.repeat == 0 || m.repeat > kMaxCommandsPerMessage) {
    return Status::Protocol("rdma: " + ControlTypeName(want) + " with " + std::to_string(m.repeat) +
                            " entries (expected 1.." + std::to_string(kMaxCommandsPerMessage) + ")");
  }
  if (m.payload.size() < size_t{m.repeat} * size) {
    return Status::Protocol("rdma: " + ControlTypeName(want) + " announces " + std::to_string(m.repeat) +
                            " entries of " + std::to_string(size) + " bytes but carries " +
                            std::to_string(m.payload.size()) + " bytes");
  }
  return size_t{m.repeat};
}

void PutRegister(const RegisterEntry& e, uint8_t* p) {
  StoreBe64(p, e.key);
  StoreBe32(p + 8, e.block_index);
  StoreBe32(p + 12, 0);
  StoreBe64(p + 16, e.chunks);
}
RegisterEntry GetRegister(const uint8_t* p) { return {LoadBe64(p), LoadBe32(p + 8), LoadBe64(p + 16)}; }

}  // namespace

std::string ControlTypeName(ControlType type) {
  static constexpr const char* kNames[] = {
      "NONE",     "ERROR",          "READY",           "QEMU FILE",         "RAM BLOCKS REQUEST", "RAM BLOCKS RESULT",
      "COMPRESS", "REGISTER REQUEST", "REGISTER RESULT", "REGISTER FINISHED", "UNREGISTER REQUEST",
      "UNREGISTER FINISHED"};
  auto v = static_cast<uint32_t>(type);
  if (v > kMaxControlType) return "type " + std::to_string(v);
  return kNames[v];
}

std::array<uint8_t, kCapabilitiesSize> EncodeCapabilities(const Capabilities& caps) {
  std::array<uint8_t, kCapabilitiesSize> out{};
  StoreBe32(out.data(), caps.version);
  StoreBe32(out.data() + 4, caps.flags);
  return out;
}

Result<Capabilities> DecodeCapabilities(std::span<const uint8_t> data) {
  if (data.size() < kCapabilitiesSize) {
    return Status::Protocol("rdma: connection private data is " + std::to_string(data.size()) +
                            " bytes, expected at least " + std::to_string(kCapabilitiesSize) +
                            " (QEMU RDMA capabilities)");
  }
  Capabilities c{LoadBe32(data.data()), LoadBe32(data.data() + 4)};
  if (c.version != kProtocolVersion) {
    return Status::Unsupported("rdma: peer speaks RDMA protocol version " + std::to_string(c.version) +
                               ", ferry speaks version " + std::to_string(kProtocolVersion));
  }
  if (c.flags & kFerryCapabilities) {
    if (data.size() < kFerryCapabilitiesSize) {
      return Status::Protocol("rdma: connection private data with ferry's multifd flags is " +
                              std::to_string(data.size()) + " bytes, expected " +
                              std::to_string(kFerryCapabilitiesSize));
    }
    c.channel = LoadBe32(data.data() + 8);
    c.channels = LoadBe32(data.data() + 12);
  }
  return c;
}

std::vector<uint8_t> EncodeConnectData(const Capabilities& caps) {
  std::vector<uint8_t> out((caps.flags & kFerryCapabilities) ? kFerryCapabilitiesSize : kCapabilitiesSize);
  StoreBe32(out.data(), caps.version);
  StoreBe32(out.data() + 4, caps.flags);
  if (out.size() > kCapabilitiesSize) {
    StoreBe32(out.data() + 8, caps.channel);
    StoreBe32(out.data() + 12, caps.channels);
  }
  return out;
}

std::vector<uint8_t> EncodeRegisterFinished(uint64_t written_pages, uint64_t rounds) {
  uint8_t n[16];
  StoreBe64(n, written_pages);
  StoreBe64(n + 8, rounds);
  return EncodeMessage(ControlType::kRegisterFinished, 1, std::span<const uint8_t>(n, 16)).value();
}

uint64_t DecodeWrittenPages(const Message& m) {
  if (m.type != ControlType::kRegisterFinished || m.payload.size() < 8) return 0;
  return LoadBe64(m.payload.data());
}

uint64_t DecodeRounds(const Message& m) {
  if (m.type != ControlType::kRegisterFinished || m.payload.size() < 16) return 0;
  return LoadBe64(m.payload.data() + 8);
}

Capabilities AcceptCapabilities(const Capabilities& requested) {
  return {kProtocolVersion, requested.flags & kKnownCapabilities};
}

void EncodeHeader(const ControlHeader& h, uint8_t* out) {
  StoreBe32(out, h.len);
  StoreBe32(out + 4, static_cast<uint32_t>(h.type));
  StoreBe32(out + 8, h.repeat);
  StoreBe32(out + 12, 0);
}

Result<std::vector<uint8_t>> EncodeMessage(ControlType type, uint32_t repeat, std::span<const uint8_t> payload) {
  if (type == ControlType::kNone || static_cast<uint32_t>(type) > kMaxControlType) {
    return Status::InvalidArgument("rdma: cannot send a control message of " + ControlTypeName(type));
  }
  if (payload.size() > kMaxPayload) {
    return Status::InvalidArgument("rdma: " + ControlTypeName(type) + " payload of " +
                                   std::to_string(payload.size()) + " bytes exceeds " +
                                   std::to_string(kMaxPayload));
  }
  std::vector<uint8_t> out(kHeaderSize + payload.size());
  EncodeHeader({static_cast<uint32_t>(payload.size()), type, repeat}, out.data());
  if (!payload.empty()) std::memcpy(out.data() + kHeaderSize, payload.data(), payload.size());
  return out;
}

std::vector<uint8_t> EncodeEmpty(ControlType type) {
  std::vector<uint8_t> out(kHeaderSize);
  EncodeHeader({0, type, 1}, out.data());
  return out;
}

Result<std::vector<uint8_t>> EncodeQemuFile(std::span<const uint8_t> data) {
  return EncodeMessage(ControlType::kQemuFile, 1, data);
}

Result<std::vector<uint8_t>> EncodeRamBlocksResult(std::span<const DestBlock> blocks) {
  return EncodeEntries(ControlType::kRamBlocksResult, blocks, kDestBlockSize, 1,
                       [](const DestBlock& b, uint8_t* p) {
                         StoreBe64(p, b.host_addr);
                         StoreBe64(p + 8, b.offset);
                         StoreBe64(p + 16, b.length);
                         StoreBe32(p + 24, b.rkey);
                         StoreBe32(p + 28, 0);
                       });
}

Result<std::vector<uint8_t>> EncodeRegisterRequest(std::span<const RegisterEntry> entries) {
  return EncodeEntries(ControlType::kRegisterRequest, entries, kRegisterEntrySize,
                       static_cast<uint32_t>(entries.size()), PutRegister);
}

Result<std::vector<uint8_t>> EncodeUnregisterRequest(std::span<const RegisterEntry> entries) {
  return EncodeEntries(ControlType::kUnregisterRequest, entries, kRegisterEntrySize,
                       static_cast<uint32_t>(entries.size()), PutRegister);
}

Result<std::vector<uint8_t>> EncodeRegisterResults(std::span<const RegisterResult> results) {
  return EncodeEntries(ControlType::kRegisterResult, results, kRegisterResultSize,
                       static_cast<uint32_t>(results.size()), [](const RegisterResult& r, uint8_t* p) {
                         StoreBe32(p, r.rkey);
                         StoreBe32(p + 4, 0);
                         StoreBe64(p + 8, r.host_addr);
                       });
}

Result<std::vector<uint8_t>> EncodeCompress(std::span<const CompressEntry> entries) {
  return EncodeEntries(ControlType::kCompress, entries, kCompressEntrySize, static_cast<uint32_t>(entries.size()),
                       [](const CompressEntry& c, uint8_t* p) {
                         StoreBe32(p, c.value);
                         StoreBe32(p + 4, c.block_index);
                         StoreBe64(p + 8, c.offset);
                         StoreBe64(p + 16, c.length);
                       });
}

Result<Message> DecodeMessage(std::span<const uint8_t> received) {
  if (received.size() < kHeaderSize) {
    return Status::Protocol("rdma: control message of " + std::to_string(received.size()) +
                            " bytes is shorter than its 16-byte header");
  }
  const uint32_t len = LoadBe32(received.data());
  const uint32_t type = LoadBe32(received.data() + 4);
  Message m;
  m.type = static_cast<ControlType>(type);
  m.repeat = LoadBe32(received.data() + 8);
  if (type == 0 || type > kMaxControlType) {
    return Status::Protocol("rdma: unknown control message type " + std::to_string(type));
  }
  if (len > kMaxPayload) {
    return Status::Protocol("rdma: " + ControlTypeName(m.type) + " announces " + std::to_string(len) +
                            " bytes, more than the " + std::to_string(kMaxPayload) + " a message can hold");
  }
  if (len > received.size() - kHeaderSize) {
    return Status::Protocol("rdma: " + ControlTypeName(m.type) + " announces " + std::to_string(len) +
                            " bytes but only " + std::to_string(received.size() - kHeaderSize) + " arrived");
  }
  m.payload = received.subspan(kHeaderSize, len);
  return m;
}

Status ExpectType(const Message& m, ControlType want) {
  if (m.type == want) return Status();
  if (m.type == ControlType::kError) {
    return Status::Protocol("rdma: peer reported an error (ERROR message) while ferry waited for " +
                            ControlTypeName(want));
  }
  return Status::Protocol("rdma: expected " + ControlTypeName(want) + ", received " + ControlTypeName(m.type));
}

Result<std::vector<DestBlock>> DecodeRamBlocksResult(const Message& m) {
  FERRY_RETURN_IF_ERROR(ExpectType(m, ControlType::kRamBlocksResult));
  if (m.payload.size() % kDestBlockSize != 0) {
    return Status::Protocol("rdma: RAM BLOCKS RESULT of " + std::to_string(m.payload.size()) +
                            " bytes is not a whole number of 32-byte blocks");
  }
  std::vector<DestBlock> out(m.payload.size() / kDestBlockSize);
  for (size_t i = 0; i < out.size(); ++i) {
    const uint8_t* p = m.payload.data() + i * kDestBlockSize;
    out[i] = {LoadBe64(p), LoadBe64(p + 8), LoadBe64(p + 16), LoadBe32(p + 24)};
  }
  return out;
}

Result<std::vector<RegisterEntry>> DecodeRegisterRequest(const Message& m) {
  FERRY_ASSIGN_OR_RETURN(size_t n, CountedEntries(m, ControlType::kRegisterRequest, kRegisterEntrySize));
  std::vector<RegisterEntry> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = GetRegister(m.payload.data() + i * kRegisterEntrySize);
  return out;
}

Result<std::vector<RegisterEntry>> DecodeUnregisterRequest(const Message& m) {
  FERRY_ASSIGN_OR_RETURN(size_t n, CountedEntries(m, ControlType::kUnregisterRequest, kRegisterEntrySize));
  std::vector<RegisterEntry> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = GetRegister(m.payload.data() + i * kRegisterEntrySize);
  return out;
}

Result<std::vector<RegisterResult>> DecodeRegisterResults(const Message& m) {
  FERRY_ASSIGN_OR_RETURN(size_t n, CountedEntries(m, ControlType::kRegisterResult, kRegisterResultSize));
  std::vector<RegisterResult> out(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = m.payload.data() + i * kRegisterResultSize;
    out[i] = {LoadBe32(p), LoadBe64(p + 8)};
  }
  return out;
}

Result<std::vector<CompressEntry>> DecodeCompress(const Message& in) {
  // QEMU's destination reads one COMPRESS entry whatever repeat says.
  Message m = in;
  if (m.repeat == 0) m.repeat = 1;
  FERRY_ASSIGN_OR_RETURN(size_t n, CountedEntries(m, ControlType::kCompress, kCompressEntrySize));
  std::vector<CompressEntry> out(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = m.payload.data() + i * kCompressEntrySize;
    out[i] = {LoadBe32(p), LoadBe32(p + 4), LoadBe64(p + 8), LoadBe64(p + 16)};
  }
  return out;
}

}  // namespace ferry::rdma
