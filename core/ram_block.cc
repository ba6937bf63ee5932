#include "core/ram_block.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>

namespace ferry {

bool PageHashes::Enable(uint64_t pages) {
  Reset();
  if (pages == 0) return false;
  // Anonymous and never touched: reads as zeros ("not recorded") and takes
  // memory only where entries are written. Huge pages where the kernel has
  // them: one fault per 256 Ki pages recorded (1 GiB of guest memory), not
  // one per 512, so the destination's faults stay about one per 2 MiB of data.
  constexpr uint64_t kHuge = 2ull << 20;
  const uint64_t len = (pages * sizeof(uint64_t) + kHuge - 1) & ~(kHuge - 1);
  void* p = ::mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return false;
  const uintptr_t raw = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (raw + kHuge - 1) & ~(kHuge - 1);
  if (aligned > raw) ::munmap(p, aligned - raw);
  if (const uintptr_t tail = raw + len + kHuge - (aligned + len); tail > 0) {
    ::munmap(reinterpret_cast<void*>(aligned + len), tail);
  }
  (void)::madvise(reinterpret_cast<void*>(aligned), len, MADV_HUGEPAGE);  // a hint: 4 KiB pages otherwise
  data_ = reinterpret_cast<uint64_t*>(aligned);
  bytes_ = len;
  return true;
}

void RamBlock::PopulateForWrite(uint64_t first, uint64_t count, bool atomic) const {
  if (count == 0 || known_zero.size() == 0) return;
  if (!(atomic ? known_zero.TestAtomic(first) : known_zero.Test(first))) return;
  // Known zero but already resident (a preallocated destination): walking
  // the populated range again would only cost time.
  unsigned char resident = 0;
  if (::mincore(host + first * kPageSize, kPageSize, &resident) == 0 && (resident & 1)) return;
  (void)::madvise(host + first * kPageSize, count * kPageSize, MADV_POPULATE_WRITE);
}

void PageHashes::Reset() {
  if (data_) ::munmap(data_, bytes_);
  data_ = nullptr;
  bytes_ = 0;
}

uint64_t DirtyBitmap::SetRange(uint64_t first, uint64_t count) {
  uint64_t added = 0;
  uint64_t i = first;
  const uint64_t end = std::min(first + count, bits_);
  while (i < end) {
    const uint64_t w = i >> 6;
    const uint64_t lo = i & 63;
    const uint64_t n = std::min<uint64_t>(64 - lo, end - i);
    const uint64_t mask = (n == 64 ? ~0ull : ((1ull << n) - 1)) << lo;
    added += std::popcount(mask & ~words_[w]);
    words_[w] |= mask;
    i += n;
  }
  return added;
}

void DirtyBitmap::ClearRange(uint64_t first, uint64_t count) {
  uint64_t i = first;
  const uint64_t end = std::min(first + count, bits_);
  while (i < end) {
    const uint64_t lo = i & 63;
    const uint64_t n = std::min<uint64_t>(64 - lo, end - i);
    words_[i >> 6] &= ~((n == 64 ? ~0ull : ((1ull << n) - 1)) << lo);
    i += n;
  }
}

uint64_t DirtyBitmap::Count() const {
  uint64_t n = 0;
  for (uint64_t w : words_) n += std::popcount(w);
  return n;
}

uint64_t DirtyBitmap::FindNextSet(uint64_t from) const {
  if (from >= bits_) return bits_;
  uint64_t w = from >> 6;
  uint64_t word = words_[w] & (~0ull << (from & 63));
  while (true) {
    if (word) {
      uint64_t i = (w << 6) + std::countr_zero(word);
      return i < bits_ ? i : bits_;
    }
    if (++w >= words_.size()) return bits_;
    word = words_[w];
  }
}

uint64_t DirtyBitmap::FindNextClear(uint64_t from, uint64_t limit) const {
  limit = std::min(limit, bits_);
  if (from >= limit) return limit;
  uint64_t w = from >> 6;
  const uint64_t last = (limit - 1) >> 6;
  uint64_t word = ~words_[w] & (~0ull << (from & 63));
  while (true) {
    if (word) {
      uint64_t i = (w << 6) + std::countr_zero(word);
      return i < limit ? i : limit;
    }
    if (++w > last) return limit;
    word = ~words_[w];
  }
}

Status RamBlockList::Add(std::string name, uint8_t* host, uint64_t used_length) {
  if (name.empty() || name.size() > 255) {
    return Status::InvalidArgument("RAM block name must be 1-255 bytes, got '" + name + "'");
  }
  if (Find(name)) return Status::InvalidArgument("RAM block '" + name + "' registered twice");
  if (used_length == 0 || used_length % kPageSize) {
    return Status::InvalidArgument("RAM block '" + name + "' length " + std::to_string(used_length) +
                                   " is not a non-zero multiple of 4096");
  }
  if (reinterpret_cast<uintptr_t>(host) % kPageSize) {
    return Status::InvalidArgument("RAM block '" + name + "' host memory is not page aligned");
  }
  auto b = std::make_unique<RamBlock>();
  b->name = std::move(name);
  b->host = host;
  b->used_length = used_length;
  b->dirty.Resize(used_length >> kPageShift);
  blocks_.push_back(std::move(b));
  return Status::Ok();
}

RamBlock* RamBlockList::Find(std::string_view name) {
  for (auto& b : blocks_) {
    if (b->name == name) return b.get();
  }
  return nullptr;
}

const RamBlock* RamBlockList::Find(std::string_view name) const {
  return const_cast<RamBlockList*>(this)->Find(name);
}

uint64_t RamBlockList::total_bytes() const {
  uint64_t t = 0;
  for (auto& b : blocks_) t += b->used_length;
  return t;
}

}  // namespace ferry
