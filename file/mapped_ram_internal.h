// mapped-ram's private parts shared by its format code (mapped_ram_format.cc),
// the source's writer (mapped_ram_writer.cc) and the destination's readers
// (mapped_ram_reader.cc). The public side is file/mapped_ram.h.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/unique_fd.h"
#include "file/file_channel.h"
#include "file/io_engine.h"
#include "file/mapped_ram.h"

namespace ferry::mapped_ram {

// Longest run of pages handed to the I/O engine as one request (1 MiB).
inline constexpr uint32_t kMaxRunPages = 256;

inline uint64_t RoundUp(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

// The bitmap's words in file order: little-endian 64-bit words (the host's
// own layout on x86; converted elsewhere).
void WordsToFile(std::vector<uint64_t>& words);
void WordsFromFile(std::vector<uint64_t>& words);

// What a plain (not mapped-ram) stream has where the mapped-ram header
// should be: the next block's entry {u8 len, name, be64 length} or the EOS
// record that closes the block list. "" if the bytes look like neither.
std::string PlainStreamHint(const uint8_t raw[kHeaderSize]);

// Passes each distinct notice on once, whichever thread says it first.
class NoteOnce {
 public:
  explicit NoteOnce(std::function<void(std::string_view)> note) : note_(std::move(note)) {}
  void operator()(std::string_view line) {
    if (!note_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!seen_.emplace(line).second) return;
    }
    note_(line);
  }

 private:
  std::function<void(std::string_view)> note_;
  std::mutex mu_;
  std::set<std::string, std::less<>> seen_;
};

// Direct I/O needs memory, length and file offset aligned; ferry's requests
// are whole pages at page-aligned offsets, which must be enough.
Status CheckDirectIo(const std::string& path);

// A descriptor for page data: O_DIRECT on request, else a duplicate of the
// main descriptor (positioned I/O only, so sharing the file offset is fine).
Result<UniqueFd> DataFd(FileChannel& file, bool write, bool direct);

// The I/O engine's options for page data on `fd` (`regions`: the guest
// memory to register, when FileOptions::register_buffers).
IoEngineOptions EngineOptions(int fd, const FileOptions& o, std::vector<iovec> regions);

}  // namespace ferry::mapped_ram
