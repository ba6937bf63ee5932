#include "core/format.h"
#include "core/ram_loader.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "core/verify.h"
#include "core/wire.h"
#include "core/zero_page.h"

namespace ferry {
namespace {

std::string At(uint64_t offset) { return " (stream offset " + std::to_string(offset) + ")"; }

// "1099511627776 bytes (1.00 TiB)"
std::string Size(uint64_t n) {
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(n);
  int u = -1;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  std::string out = std::to_string(n) + " bytes";
  if (u < 0) return out;
  char buf[32];
  snprintf(buf, sizeof(buf), " (%.2f %s)", v, units[u]);
  return out + buf;
}

}  // namespace

Status RamLoader::LoadBlockList(StreamReader& r, uint64_t total) {
  if (setup_seen_) return Status::Protocol("RAM block list sent twice");
  if (total == 0) return Status::Protocol("RAM block list announces 0 bytes of RAM");
  if (max_ram_ != 0 && total > max_ram_) {
    return Status::InvalidArgument("the stream announces " + Size(total) +
                                   " of RAM, more than this destination may allocate: " + Size(max_ram_) +
                                   (max_ram_source_.empty() ? "" : ", " + max_ram_source_));
  }
  uint64_t sum = 0;
  std::vector<bool> named(blocks_.size(), false);
  while (sum < total) {
    const uint64_t at = r.offset();
    std::string name = r.GetName();
    uint64_t length = r.GetBe64();
    FERRY_RETURN_IF_ERROR(r.status());
    if (name.empty()) return Status::Protocol("RAM block with an empty name" + At(at));
    if (length == 0 || length % kPageSize) {
      return Status::Protocol("RAM block '" + name + "' has length " + std::to_string(length) +
                              ", not a non-zero multiple of 4096" + At(at));
    }
    if (length > total - sum) {
      return Status::Protocol("RAM block '" + name + "' (" + std::to_string(length) +
                              " bytes) exceeds the announced total of " + std::to_string(total) +
                              " bytes" + At(at));
    }
    RamBlock* b = blocks_.Find(name);
    if (!b) {
      if (!allocator_) {
        return Status::Mismatch("the stream carries RAM block '" + name + "' (" + std::to_string(length) +
                                " bytes) which this guest does not have");
      }
      FERRY_ASSIGN_OR_RETURN(uint8_t* host, allocator_->Allocate(name, length));
      FERRY_RETURN_IF_ERROR(blocks_.Add(name, host, length));
      named.push_back(false);
      b = blocks_.Find(name);
    } else if (b->used_length != length) {
      return Status::Mismatch("RAM block '" + name + "' size mismatch: the stream has " +
                              std::to_string(length) + " bytes, this guest has " +
                              std::to_string(b->used_length) + " bytes");
    }
    size_t idx = IndexOf(b);
    if (named[idx]) return Status::Protocol("RAM block '" + name + "' listed twice" + At(at));
    named[idx] = true;
    sum += length;
    // Fresh memory: every page is known to be zero until something writes
    // it (set before mapped-ram loads the block's pages below).
    if (fresh_) {
      b->known_zero.Resize(b->pages());
      b->known_zero.SetAll();
    }
    if (record_hashes_ && (!receiver_ || receiver_->records_page_hashes())) {
      b->page_hashes.Enable(b->pages());
    } else {
      b->page_hashes.Reset();
    }
    if (receiver_) FERRY_RETURN_IF_ERROR(receiver_->OnBlockListed(r, *b));
  }
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (!named[i]) {
      return Status::Mismatch("this guest has RAM block '" + blocks_[i].name +
                              "' which the stream does not carry");
    }
  }
  setup_seen_ = true;
  return Status::Ok();
}

void RamLoader::ZeroRun(RamBlock& b, uint64_t first, uint64_t count) {
  // Pages still known to be zero cost nothing, 64 at a time; the others are
  // zeroed (if they are not already) like a ZERO record's page.
  const bool tracked = b.known_zero.size() != 0;
  const bool hashes = b.page_hashes.enabled();
  const uint64_t end = first + count;
  uint64_t i = first;
  while (i < end) {
    if (tracked) {
      if ((i & 63) == 0 && end - i >= 64) {
        uint64_t& word = b.known_zero.words()[i >> 6];
        const uint64_t w = receiver_ ? std::atomic_ref<uint64_t>(word).load(std::memory_order_relaxed) : word;
        if (w == ~0ull) {
          i += 64;
          continue;
        }
      }
      if (receiver_ ? b.known_zero.TestAtomic(i) : b.known_zero.Test(i)) {
        ++i;
        continue;
      }
    }
    uint8_t* host = b.page(i);
    if (!IsZeroPage(host)) std::memset(host, 0, kPageSize);
    if (hashes) b.page_hashes.Set(i, ZeroPageHash());
    ++i;
  }
}

Status RamLoader::PageRun(StreamReader& r, RamBlock& b, uint64_t first, uint64_t count) {
  uint8_t* host = b.page(first);
  if (b.known_zero.size() != 0) {
    b.PopulateForWrite(first, count, receiver_ != nullptr);
    if (receiver_) {
      for (uint64_t i = first; i < first + count; ++i) b.known_zero.ClearAtomic(i);
    } else {
      b.known_zero.ClearRange(first, count);
    }
  }
  // From the socket straight into guest memory (GetBytes bypasses the
  // buffer for pieces this large), a piece at a time so that its pages are
  // hashed while they are still in this core's cache.
  constexpr uint64_t kPiece = 64;  // pages: 256 KiB
  for (uint64_t done = 0; done < count; done += kPiece) {
    const uint64_t n = std::min(kPiece, count - done);
    r.GetBytes(host + done * kPageSize, n * kPageSize);
    FERRY_RETURN_IF_ERROR(r.status());
    if (b.page_hashes.enabled()) {
      for (uint64_t i = done; i < done + n; ++i) b.page_hashes.Set(first + i, PageHash(host + i * kPageSize));
    }
  }
  return Status::Ok();
}

size_t RamLoader::IndexOf(const RamBlock* b) const {
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (&blocks_[i] == b) return i;
  }
  return blocks_.size();
}

RamBlock* RamLoader::BlockFor(StreamReader& r, uint64_t flags, uint64_t at) {
  if (flags & wire::kRamContinue) {
    if (!last_block_) {
      r.SetError(Status::Protocol("page record with CONTINUE but no previous block" + At(at)));
    }
    return last_block_;
  }
  std::string name = r.GetName();
  if (!r.status().ok()) return nullptr;
  RamBlock* b = blocks_.Find(name);
  if (!b) {
    r.SetError(Status::Protocol("page record for unknown RAM block '" + name + "'" + At(at)));
    return nullptr;
  }
  last_block_ = b;
  return b;
}

Status RamLoader::Load(StreamReader& r, uint32_t version) {
  if (version != wire::kRamSectionVersion) {
    return Status::Protocol("RAM section version " + std::to_string(version) + " is not supported (only 4)");
  }
  constexpr uint64_t kKnown = wire::kRamZero | wire::kRamMemSize | wire::kRamPage | wire::kRamEos |
                              wire::kRamContinue | wire::kRamMultifdFlush | wire::kRamHook | wire::kRamZeroRun |
                              wire::kRamPageRun;
  while (true) {
    const uint64_t at = r.offset();
    const uint64_t rec = r.GetBe64();
    FERRY_RETURN_IF_ERROR(r.status());
    const uint64_t flags = rec & wire::kRamFlagMask;
    const uint64_t addr = rec & kPageMask;
    if (flags & ~kKnown) {
      return Status::Protocol("unknown RAM record flags " + Hex(flags & ~kKnown) + " in record " + Hex(rec) + At(at));
    }
    if (receiver_ && (flags & receiver_->forbidden_flags())) {
      return Status::Protocol("RAM record flags " + Hex(flags & receiver_->forbidden_flags()) +
                              " are not allowed in this stream (mapped-ram keeps pages out of the stream)" + At(at));
    }
    const uint64_t kind = flags & ~wire::kRamContinue;
    switch (kind) {
      case wire::kRamMemSize:
        FERRY_RETURN_IF_ERROR(LoadBlockList(r, addr));
        if (receiver_) receiver_->BlocksReady(blocks_);
        break;
      case wire::kRamZero:
      case wire::kRamPage: {
        if (!setup_seen_) return Status::Protocol("page record before the RAM block list" + At(at));
        RamBlock* b = BlockFor(r, flags, at);
        FERRY_RETURN_IF_ERROR(r.status());
        if (addr >= b->used_length) {
          return Status::Protocol("page offset " + Hex(addr) + " is outside RAM block '" + b->name + "' (" +
                                  Hex(b->used_length) + " bytes)" + At(at));
        }
        const uint64_t index = addr >> kPageShift;
        uint8_t* host = b->page(index);
        if (kind == wire::kRamZero) {
          uint8_t fill = r.Get8();
          FERRY_RETURN_IF_ERROR(r.status());
          if (fill != 0) {
            return Status::Protocol("zero-page record with fill byte " + Hex(fill) + " for block '" + b->name +
                                    "' offset " + Hex(addr) + At(at));
          }
          // A page still known to be zero costs nothing: no read, no write,
          // no fault. Multifd receivers clear bits of the same words from
          // their threads (the barrier orders a page's records).
          const bool known_zero =
              b->known_zero.size() != 0 && (receiver_ ? b->known_zero.TestAtomic(index) : b->known_zero.Test(index));
          if (!known_zero) {
            if (!IsZeroPage(host)) std::memset(host, 0, kPageSize);
            if (b->page_hashes.enabled()) b->page_hashes.Set(index, ZeroPageHash());
          }
          ++counters_.zero_pages;
        } else {
          if (b->known_zero.size() != 0) {
            if (receiver_) {
              b->known_zero.ClearAtomic(index);
            } else {
              b->known_zero.Clear(index);
            }
          }
          r.GetBytes(host, kPageSize);
          FERRY_RETURN_IF_ERROR(r.status());
          // Hashed now, while the page is in the cache: verification then
          // need not read it again.
          if (b->page_hashes.enabled()) b->page_hashes.Set(index, PageHash(host));
          ++counters_.normal_pages;
        }
        break;
      }
      case wire::kRamZeroRun:
      case wire::kRamPageRun: {
        const char* what = kind == wire::kRamZeroRun ? "zero-run" : "page-run";
        if (!setup_seen_) return Status::Protocol(std::string(what) + " record before the RAM block list" + At(at));
        RamBlock* b = BlockFor(r, flags, at);
        FERRY_RETURN_IF_ERROR(r.status());
        const uint64_t count = r.GetBe64();
        FERRY_RETURN_IF_ERROR(r.status());
        const uint64_t first = addr >> kPageShift;
        if (addr >= b->used_length || count == 0 || count > b->pages() - first) {
          return Status::Protocol(std::string(what) + " record of " + std::to_string(count) + " pages at offset " +
                                  Hex(addr) + " does not fit RAM block '" + b->name + "' (" + Hex(b->used_length) +
                                  " bytes)" + At(at));
        }
        if (kind == wire::kRamZeroRun) {
          ZeroRun(*b, first, count);
          counters_.zero_pages += count;
        } else {
          FERRY_RETURN_IF_ERROR(PageRun(r, *b, first, count));
          counters_.normal_pages += count;
        }
        break;
      }
      case wire::kRamEos:
        if (flags & wire::kRamContinue) return Status::Protocol("EOS record with CONTINUE flag" + At(at));
        if (receiver_ && !sync_on_eos_ && !eos_seen_ && !flush_seen_ &&
            !(receiver_->forbidden_flags() & wire::kRamMultifdFlush)) {
          // Both QEMU >= 8 and ferry put a barrier in the setup section.
          return Status::Protocol(
              "the RAM setup section ended without a MULTIFD_FLUSH record: the source places its multifd "
              "barriers at every section end (QEMU 7.2, or multifd-flush-after-each-section=on), this "
              "destination once per round; receive with multifd-flush-after-each-section=on" + At(at));
        }
        eos_seen_ = true;
        if (receiver_ && sync_on_eos_) FERRY_RETURN_IF_ERROR(receiver_->Sync());
        return Status::Ok();
      case wire::kRamHook:
        if (!receiver_) {
          return Status::Protocol("RAM_SAVE_FLAG_HOOK record (QEMU's RDMA registration hook) in a stream that is "
                                  "not received over rdma:" + At(at));
        }
        FERRY_RETURN_IF_ERROR(receiver_->OnRamHook(r));
        break;
      case wire::kRamMultifdFlush:
        if (!receiver_) {
          return Status::Protocol("MULTIFD_FLUSH record, but multifd is not enabled on this side" + At(at));
        }
        if (flags & wire::kRamContinue) return Status::Protocol("MULTIFD_FLUSH record with CONTINUE flag" + At(at));
        if (sync_on_eos_) {
          return Status::Protocol(
              "MULTIFD_FLUSH record: the source places its multifd barriers once per round (QEMU >= 8 "
              "default), this destination at every section end (multifd-flush-after-each-section=on); "
              "receive with multifd-flush-after-each-section=off" + At(at));
        }
        flush_seen_ = true;
        FERRY_RETURN_IF_ERROR(receiver_->Sync());
        break;
      default:
        return Status::Protocol("invalid combination of RAM record flags " + Hex(flags) + At(at));
    }
  }
}

}  // namespace ferry
