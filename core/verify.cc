#include "core/endian.h"
#include "core/verify.h"

#include <xxhash.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/page_hash_simd.h"
#include "core/wire.h"
#include "core/worker_pool.h"
#include "core/zero_page.h"

namespace ferry {
namespace {

// Pages hashed per step: their hashes (512 KiB) are sent or compared before
// the next step starts.
constexpr uint64_t kStepPages = 64 * 1024;
// The first version of the section: every page's hash listed (verify.h).
constexpr uint32_t kVerifyVersionPlain = 1;
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
      out[i] = IsZeroPage(page) ? zero_hash : PageHash(page);
    }
  };
  uint64_t to_read = count;
  if (have || known) {
    // Look-ups first, on this thread (no thread wakes up for them); only the
    // pages left to read are worth other threads.
    to_read = 0;
    for (uint64_t i = 0; i < count; ++i) {
      // A whole word of known-zero pages at once: a sparse guest is mostly
      // these, and they are most of a large guest's pages.
      if (known && ((first + i) & 63) == 0 && i + 64 <= count &&
          b.known_zero.words()[(first + i) >> 6] == ~uint64_t{0}) {
        std::fill_n(out + i, 64, zero_hash);
        i += 63;
        continue;
      }
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

namespace {
uint64_t PageHashBaseline(const uint8_t* page) { return XXH3_64bits(page, kPageSize); }

detail::PageHashFn PickPageHash() {
  // libgcc's feature bits include the OS check (XCR0) for AVX register state.
  __builtin_cpu_init();
  if (detail::kPageHashAvx512 && __builtin_cpu_supports("avx512f")) return detail::kPageHashAvx512;
  if (detail::kPageHashAvx2 && __builtin_cpu_supports("avx2")) return detail::kPageHashAvx2;
  return &PageHashBaseline;
}
}  // namespace

uint64_t PageHash(const uint8_t* page) {
  static const detail::PageHashFn best = PickPageHash();
  return best(page);
}

uint64_t ZeroPageHash() {
  static const uint64_t h = [] {
    std::vector<uint8_t> zero(kPageSize, 0);
    return XXH3_64bits(zero.data(), kPageSize);
  }();
  return h;
}

namespace {

// Encodes hashes[0, n) as runs (see verify.h) into `out`; returns its size.
// `out` holds at least 16 * n bytes: every run covers a page or more and
// costs 8 bytes plus 8 per listed hash.
size_t EncodeRuns(const uint64_t* hashes, uint64_t n, uint64_t zero_hash, uint8_t* out) {
  size_t len = 0;
  uint64_t j = 0;
  while (j < n) {
    uint64_t zeros = 0;
    while (j + zeros < n && hashes[j + zeros] == zero_hash) ++zeros;
    uint64_t listed = 0;
    while (j + zeros + listed < n && hashes[j + zeros + listed] != zero_hash) ++listed;
    StoreBe32(out + len, static_cast<uint32_t>(zeros));
    StoreBe32(out + len + 4, static_cast<uint32_t>(listed));
    len += 8;
    for (uint64_t k = 0; k < listed; ++k, len += 8) StoreBe64(out + len, hashes[j + zeros + k]);
    j += zeros + listed;
  }
  return len;
}

}  // namespace

void WriteVerifyPayload(StreamWriter& w, const RamBlockList& blocks) {
  w.PutBe32(static_cast<uint32_t>(blocks.size()));
  std::vector<uint64_t> hashes(kStepPages);
  std::vector<uint8_t> raw(kStepPages * 16);
  const uint64_t zero_hash = ZeroPageHash();
  for (const RamBlock& b : blocks) {
    w.PutName(b.name);
    w.PutBe64(b.used_length);
    XXH3_state_t* st = XXH3_createState();
    XXH3_128bits_reset(st);
    const uint64_t pages = b.pages();
    for (uint64_t i = 0; i < pages; i += kStepPages) {
      const uint64_t n = std::min(kStepPages, pages - i);
      HashPages(b, i, n, hashes.data(), /*recorded=*/false);
      const size_t len = EncodeRuns(hashes.data(), n, zero_hash, raw.data());
      XXH3_128bits_update(st, raw.data(), len);
      w.PutBytes(raw.data(), len);
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
  if (version != wire::kVerifyVersion && version != kVerifyVersionPlain) {
    return Status::Protocol("verification section version " + std::to_string(version) + " is not supported");
  }
  const bool runs = version != kVerifyVersionPlain;
  seen_ = true;
  const uint32_t count = r.GetBe32();
  FERRY_RETURN_IF_ERROR(r.status());
  if (count != blocks_.size()) {
    return Status::Mismatch("verification: the source has " + std::to_string(count) +
                            " RAM blocks, this guest has " + std::to_string(blocks_.size()));
  }
  const uint64_t zero_hash = ZeroPageHash();
  std::string first_diff;
  uint64_t differing = 0;
  std::vector<uint64_t> mine(kStepPages), theirs(kStepPages);
  std::vector<uint8_t> raw(kStepPages * 8);
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> st(XXH3_createState(), &XXH3_freeState);
  for (uint32_t k = 0; k < count; ++k) {
    std::string name = r.GetName();
    uint64_t length = r.GetBe64();
    FERRY_RETURN_IF_ERROR(r.status());
    const RamBlock* b = blocks_.Find(name);
    if (!b || b->used_length != length) {
      return Status::Mismatch("verification: the source's block '" + name + "' (" + std::to_string(length) +
                              " bytes) does not match this guest's blocks");
    }
    XXH3_128bits_reset(st.get());
    const uint64_t pages = b->pages();
    // Reads `bytes` of the list into raw and adds them to the digest.
    auto read = [&](size_t bytes) {
      r.GetBytes(raw.data(), bytes);
      if (r.status().ok()) XXH3_128bits_update(st.get(), raw.data(), bytes);
      return r.status();
    };
    uint64_t zeros_left = 0, listed_left = 0;  // of the current run (version 2)
    for (uint64_t i = 0; i < pages; i += kStepPages) {
      const uint64_t n = std::min(kStepPages, pages - i);
      // The source's hashes of pages [i, i + n) into theirs.
      for (uint64_t j = 0; j < n;) {
        if (!runs) {
          FERRY_RETURN_IF_ERROR(read(n * 8));
          for (uint64_t t = 0; t < n; ++t) theirs[t] = LoadBe64(&raw[t * 8]);
          break;
        }
        if (zeros_left == 0 && listed_left == 0) {
          FERRY_RETURN_IF_ERROR(read(8));
          zeros_left = LoadBe32(&raw[0]);
          listed_left = LoadBe32(&raw[4]);
          if (zeros_left + listed_left == 0 || zeros_left + listed_left > pages - (i + j)) {
            return Status::Protocol("verification: a run of " + std::to_string(zeros_left + listed_left) +
                                    " page hashes in block '" + name + "' at page " + std::to_string(i + j) +
                                    ", which has " + std::to_string(pages - (i + j)) + " pages left");
          }
        }
        const uint64_t z = std::min(zeros_left, n - j);
        std::fill_n(theirs.data() + j, z, zero_hash);
        zeros_left -= z;
        j += z;
        const uint64_t l = std::min(listed_left, n - j);
        if (l) {
          FERRY_RETURN_IF_ERROR(read(l * 8));
          for (uint64_t t = 0; t < l; ++t) theirs[j + t] = LoadBe64(&raw[t * 8]);
          listed_left -= l;
          j += l;
        }
      }
      HashPages(*b, i, n, mine.data(), /*recorded=*/true);
      for (uint64_t j = 0; j < n; ++j) {
        if (mine[j] != theirs[j] && differing++ == 0) {
          char buf[64];
          snprintf(buf, sizeof(buf), "%" PRIu64 " (offset 0x%" PRIx64 ")", i + j, (i + j) << kPageShift);
          first_diff = "block '" + name + "' page " + buf;
        }
      }
    }
    const XXH128_hash_t d = XXH3_128bits_digest(st.get());
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
