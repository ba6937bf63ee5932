#include "core/endian.h"
#include "core/verify.h"

#include <xxhash.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "core/wire.h"
#include "core/worker_pool.h"
#include "core/zero_page.h"

namespace ferry {
namespace {

// Pages hashed per step: their hashes (512 KiB) are sent or compared before
// the next step starts.
constexpr uint64_t kStepPages = 64 * 1024;
// Below this many pages a step is hashed on the calling thread.
constexpr uint64_t kMinPagesPerThread = 4096;

// XXH3-64 of pages [first, first+count) of `b` into out[0..count). Zero pages
// (the untouched part of most guests) are recognised by a scan that is much
// cheaper than hashing. Hashing all of a guest's RAM is most of the cost of
// verification and runs while the guest is paused, so the pages are split
// over up to hardware_concurrency threads.
// On a destination (`recorded`), the hashes its writers recorded stand for
// the pages they wrote: the destination's memory changes only through them.
// The source always reads: its final memory is what the guest left there,
// and the dirty tracker that should have caught every write is exactly what
// verification must be able to catch out.
void HashPages(const RamBlock& b, uint64_t first, uint64_t count, uint64_t* out, bool recorded) {
  const uint64_t zero_hash = ZeroPageHash();
  // Pages known to be zero (never populated on a source, never written on a
  // destination) are not read at all: a read would fault them in.
  const bool known = b.known_zero.size() != 0;
  const bool have = recorded && b.page_hashes.enabled();
  auto run = [&](uint64_t from, uint64_t to) {
    for (uint64_t i = from; i < to; ++i) {
      if (known && b.known_zero.Test(first + i)) {
        out[i] = zero_hash;
        continue;
      }
      if (have) {
        if (const uint64_t h = b.page_hashes.Get(first + i); h != 0) {
          out[i] = h;
          continue;
        }
      }
      const uint8_t* page = b.page(first + i);
      out[i] = IsZeroPage(page) ? zero_hash : XXH3_64bits(page, kPageSize);
    }
  };
  uint64_t to_read = count;
  if (have || known) {
    // Look-ups first, on this thread (no thread wakes up for them); only the
    // pages left to read are worth other threads.
    to_read = 0;
    for (uint64_t i = 0; i < count; ++i) {
      if (known && b.known_zero.Test(first + i)) {
        out[i] = zero_hash;
      } else if (const uint64_t h = have ? b.page_hashes.Get(first + i) : 0; h != 0) {
        out[i] = h;
      } else {
        ++to_read;
      }
    }
    if (to_read == 0) return;
  }
  const uint64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t threads = std::min<uint64_t>({hw, 8, to_read / kMinPagesPerThread});
  if (threads <= 1) {
    run(0, count);
    return;
  }
  const uint64_t per = (count + threads - 1) / threads;
  ParallelFor(static_cast<unsigned>(threads), "verify-", [&](unsigned t) {
    const uint64_t from = std::min(count, t * per);
    run(from, std::min(count, from + per));
  });
}

}  // namespace

uint64_t PageHash(const uint8_t* page) { return XXH3_64bits(page, kPageSize); }

uint64_t ZeroPageHash() {
  static const uint64_t h = [] {
    std::vector<uint8_t> zero(kPageSize, 0);
    return XXH3_64bits(zero.data(), kPageSize);
  }();
  return h;
}

void WriteVerifyPayload(StreamWriter& w, const RamBlockList& blocks) {
  w.PutBe32(static_cast<uint32_t>(blocks.size()));
  std::vector<uint64_t> hashes(kStepPages);
  std::vector<uint8_t> raw(kStepPages * 8);
  for (const RamBlock& b : blocks) {
    w.PutName(b.name);
    w.PutBe64(b.used_length);
    XXH3_state_t* st = XXH3_createState();
    XXH3_128bits_reset(st);
    const uint64_t pages = b.pages();
    for (uint64_t i = 0; i < pages; i += kStepPages) {
      const uint64_t n = std::min(kStepPages, pages - i);
      HashPages(b, i, n, hashes.data(), /*recorded=*/false);
      for (uint64_t j = 0; j < n; ++j) StoreBe64(&raw[j * 8], hashes[j]);
      XXH3_128bits_update(st, raw.data(), n * 8);
      w.PutBytes(raw.data(), n * 8);
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
  std::vector<uint64_t> mine(kStepPages);
  std::vector<uint8_t> raw(kStepPages * 8);
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
    for (uint64_t i = 0; i < pages; i += kStepPages) {
      const uint64_t n = std::min(kStepPages, pages - i);
      r.GetBytes(raw.data(), n * 8);
      if (!r.status().ok()) {
        XXH3_freeState(st);
        return r.status();
      }
      XXH3_128bits_update(st, raw.data(), n * 8);
      HashPages(*b, i, n, mine.data(), /*recorded=*/true);
      for (uint64_t j = 0; j < n; ++j) {
        const uint64_t theirs = LoadBe64(&raw[j * 8]);
        if (mine[j] != theirs) {
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
