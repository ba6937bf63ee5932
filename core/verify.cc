#include "core/verify.h"

#include <xxhash.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "core/wire.h"

namespace ferry {
namespace {

constexpr size_t kBatch = 512;

void PutBe64(uint8_t* out, uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(out, &v, 8);
}

}  // namespace

void WriteVerifyPayload(StreamWriter& w, const RamBlockList& blocks) {
  w.PutBe32(static_cast<uint32_t>(blocks.size()));
  uint8_t batch[kBatch * 8];
  for (const RamBlock& b : blocks) {
    w.PutName(b.name);
    w.PutBe64(b.used_length);
    XXH3_state_t* st = XXH3_createState();
    XXH3_128bits_reset(st);
    const uint64_t pages = b.pages();
    for (uint64_t i = 0; i < pages; i += kBatch) {
      const uint64_t n = std::min<uint64_t>(kBatch, pages - i);
      for (uint64_t j = 0; j < n; ++j) PutBe64(&batch[j * 8], XXH3_64bits(b.page(i + j), kPageSize));
      XXH3_128bits_update(st, batch, n * 8);
      w.PutBytes(batch, n * 8);
    }
    XXH128_hash_t d = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    w.PutBe64(d.high64);
    w.PutBe64(d.low64);
  }
}

std::string VerifyLoader::idstr() const { return wire::kVerifyIdstr; }
uint32_t VerifyLoader::version() const { return wire::kVerifyVersion; }

Status VerifyLoader::Load(StreamReader& r, uint32_t version) {
  if (version != wire::kVerifyVersion) {
    return Status::Protocol("verification section version " + std::to_string(version) + " is not supported");
  }
  seen_ = true;
  const uint32_t count = r.GetBe32();
  FERRY_RETURN_IF_ERROR(r.status());
  if (count != blocks_.size()) {
    return Status::Mismatch("verification: the source has " + std::to_string(count) +
                            " RAM blocks, this guest has " + std::to_string(blocks_.size()));
  }
  std::string first_diff;
  uint64_t differing = 0;
  uint8_t batch[kBatch * 8];
  for (uint32_t k = 0; k < count; ++k) {
    std::string name = r.GetName();
    uint64_t length = r.GetBe64();
    FERRY_RETURN_IF_ERROR(r.status());
    const RamBlock* b = blocks_.Find(name);
    if (!b || b->used_length != length) {
      return Status::Mismatch("verification: the source's block '" + name + "' (" + std::to_string(length) +
                              " bytes) does not match this guest's blocks");
    }
    XXH3_state_t* st = XXH3_createState();
    XXH3_128bits_reset(st);
    const uint64_t pages = b->pages();
    for (uint64_t i = 0; i < pages; i += kBatch) {
      const uint64_t n = std::min<uint64_t>(kBatch, pages - i);
      r.GetBytes(batch, n * 8);
      if (!r.status().ok()) {
        XXH3_freeState(st);
        return r.status();
      }
      XXH3_128bits_update(st, batch, n * 8);
      for (uint64_t j = 0; j < n; ++j) {
        uint64_t theirs;
        std::memcpy(&theirs, &batch[j * 8], 8);
        theirs = __builtin_bswap64(theirs);
        if (XXH3_64bits(b->page(i + j), kPageSize) != theirs) {
          if (differing++ == 0) {
            char buf[64];
            snprintf(buf, sizeof(buf), "%" PRIu64 " (offset 0x%" PRIx64 ")", i + j, (i + j) << kPageShift);
            first_diff = "block '" + name + "' page " + buf;
          }
        }
      }
    }
    XXH128_hash_t d = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    const uint64_t hi = r.GetBe64();
    const uint64_t lo = r.GetBe64();
    FERRY_RETURN_IF_ERROR(r.status());
    if (hi != d.high64 || lo != d.low64) {
      return Status::Protocol("verification: digest of block '" + name + "' page list is corrupt");
    }
  }
  if (differing) {
    return Status::Mismatch("verification failed: memory differs from the source in " + std::to_string(differing) +
                            " page(s); first at " + first_diff);
  }
  verified_ = true;
  return Status::Ok();
}

}  // namespace ferry
