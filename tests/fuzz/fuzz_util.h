// Shared pieces of the libFuzzer targets (tests/fuzz/*.cc): guest memory for
// a destination, bounded the way --max-ram bounds the real one; an input as
// a file (a memfd, reused across inputs); the "sparse" input encoding that
// lets a few bytes stand for a large file with holes (mapped-ram files); and
// reading the machine name a stream announces.
//
// Each target is also built, with replay_main.cc instead of libFuzzer, into
// a program that feeds it files and directories: the regression tests of
// the normal build (tests/fuzz.cmake).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/channel.h"
#include "core/ram_block.h"
#include "core/ram_loader.h"
#include "core/status.h"

namespace ferry::fuzz {

// Guest memory for the blocks a stream announces: fresh zero mappings
// (untouched pages cost nothing), each between two inaccessible guard pages
// so that a write just past either end of a block faults, and at most `cap`
// bytes in all: beyond that the allocation fails as a destination with
// --max-ram would.
class CappedAllocator final : public RamBlockAllocator {
 public:
  explicit CappedAllocator(uint64_t cap) : cap_(cap) {}
  ~CappedAllocator() override {
    for (const Mapping& m : maps_) ::munmap(m.base, m.len);
  }
  Result<uint8_t*> Allocate(const std::string& name, uint64_t length) override {
    if (length == 0 || length % kPageSize != 0 || length > cap_ - used_) {
      return Status::InvalidArgument("fuzz: block '" + name + "' of " + std::to_string(length) +
                                     " bytes is over the fuzzing memory cap");
    }
    const size_t len = length + 2 * kPageSize;
    void* p = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return Status::InvalidArgument("fuzz: mmap failed");
    auto* base = static_cast<uint8_t*>(p);
    if (::mprotect(base + kPageSize, length, PROT_READ | PROT_WRITE) != 0) std::abort();
    maps_.push_back(Mapping{base, len});
    used_ += length;
    return base + kPageSize;
  }

 private:
  struct Mapping {
    uint8_t* base;
    size_t len;
  };
  uint64_t cap_;
  uint64_t used_ = 0;
  std::vector<Mapping> maps_;
};

// Reads from a fixed byte vector in pieces of at most `max_read` bytes;
// writes are dropped. Unlike tests/memory_channel.h it may be shut down from
// another thread (receiver threads read while the loader shuts them down).
class InputChannel final : public Channel {
 public:
  explicit InputChannel(std::vector<uint8_t> input, size_t max_read = SIZE_MAX)
      : in_(std::move(input)), max_read_(max_read) {}
  Status WriteAll(std::span<iovec>) override {
    if (shut_.load()) return Status::Cancelled("shut down");
    return Status::Ok();
  }
  Result<size_t> ReadSome(void* buf, size_t len) override {
    if (shut_.load()) return Status::Cancelled("shut down");
    const size_t n = std::min({len, in_.size() - pos_, max_read_});
    if (n == 0) return size_t{0};
    std::memcpy(buf, in_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  void Shutdown() override { shut_.store(true); }
  std::string Describe() const override { return "fuzz input"; }

 private:
  std::vector<uint8_t> in_;
  size_t pos_ = 0;
  size_t max_read_;
  std::atomic<bool> shut_{false};
};

// One memfd for the whole process, holding the current input as a file that
// the file/ code opens by path (/proc/self/fd/N).
class InputFile {
 public:
  InputFile() : fd_(::memfd_create("ferry-fuzz-input", MFD_CLOEXEC)) {
    if (fd_ < 0) std::abort();
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }

  // Makes the file exactly `bytes`.
  void SetContents(const uint8_t* data, size_t size) {
    Truncate(0);
    Truncate(size);
    WriteAt(0, data, size);
  }
  void Truncate(uint64_t size) {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) std::abort();
  }
  void WriteAt(uint64_t offset, const uint8_t* data, size_t size) {
    size_t done = 0;
    while (done < size) {
      ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(offset + done));
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
  std::string path_;
};

// The "sparse" encoding of a file: a sequence of chunks,
//   'L' be16 n, n bytes   literal bytes
//   'Z' be32 n            n zero bytes (a hole)
// and at the first byte that is neither tag, the rest of the input taken
// literally (so any plain file is also its own encoding). The file is at
// most `max_size` bytes; chunks beyond are dropped. Holes cost no memory in
// a memfd. tests/fuzz/make_corpus.sh encodes mapped-ram files this way.
inline void WriteSparse(InputFile& f, const uint8_t* data, size_t size, uint64_t max_size) {
  f.Truncate(0);
  uint64_t pos = 0;
  size_t i = 0;
  while (i < size && pos < max_size) {
    const uint8_t tag = data[i];
    if (tag == 'L' && i + 3 <= size) {
      size_t n = (size_t{data[i + 1]} << 8) | data[i + 2];
      i += 3;
      n = std::min({n, size - i, static_cast<size_t>(max_size - pos)});
      f.WriteAt(pos, data + i, n);
      pos += n;
      i += n;
    } else if (tag == 'Z' && i + 5 <= size) {
      const uint64_t n = (uint64_t{data[i + 1]} << 24) | (uint64_t{data[i + 2]} << 16) |
                         (uint64_t{data[i + 3]} << 8) | data[i + 4];
      i += 5;
      pos += std::min<uint64_t>(n, max_size - pos);
    } else {
      const size_t n = std::min<size_t>(size - i, max_size - pos);
      f.WriteAt(pos, data + i, n);
      pos += n;
      break;
    }
  }
  f.Truncate(pos);
}

// The machine name in the configuration section right after the stream
// header, or "" if the input does not start that way. The targets expect the
// machine the stream names, so that a stream is not refused for its name
// before anything else is read.
inline std::string AnnouncedMachine(const uint8_t* data, size_t size) {
  if (size < 13 || data[8] != 0x07) return "";
  const uint32_t len = (uint32_t{data[9]} << 24) | (uint32_t{data[10]} << 16) | (uint32_t{data[11]} << 8) | data[12];
  if (len > 255 || len > size - 13) return "";
  return std::string(reinterpret_cast<const char*>(data + 13), len);
}

// With FERRY_FUZZ_VERBOSE set, prints how a run ended (to see what the seeds
// reach: `FERRY_FUZZ_VERBOSE=1 fuzz_stream_replay corpus/streams`).
inline void Report(const char* what, const Status& s) {
  static const bool verbose = std::getenv("FERRY_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "  %s: %s\n", what, s.ok() ? "OK" : s.ToString().c_str());
}

// True if a packet of the multifd channel bytes `p` (packets, after the init
// packet) names zstd compression: walks the packets by their headers as far
// as they hold together. The targets set up the destination for zstd then,
// as a correctly configured destination would be.
inline bool AnyZstdPacket(const uint8_t* p, size_t n) {
  auto be32 = [p](size_t at) {
    return (uint32_t{p[at]} << 24) | (uint32_t{p[at + 1]} << 16) | (uint32_t{p[at + 2]} << 8) | p[at + 3];
  };
  constexpr uint32_t kCompressionMask = 0x1fu << 1, kZstd = 2u << 1;
  size_t pos = 0;
  while (n - pos >= 320 + 1024 && be32(pos) == 0x11223344) {
    const uint32_t flags = be32(pos + 8), normal = be32(pos + 16), next = be32(pos + 20);
    if ((flags & kCompressionMask) == kZstd) return true;
    const uint64_t data = normal == 0 ? 0 : (flags & kCompressionMask) ? next : uint64_t{normal} * 4096;
    if (data > n - pos - 320 - 1024) break;
    pos += 320 + 1024 + data;
  }
  return false;
}

// True if `needle` occurs in the input.
inline bool Contains(const uint8_t* data, size_t size, std::string_view needle) {
  if (needle.empty() || size < needle.size()) return false;
  return std::string_view(reinterpret_cast<const char*>(data), size).find(needle) != std::string_view::npos;
}

}  // namespace ferry::fuzz
