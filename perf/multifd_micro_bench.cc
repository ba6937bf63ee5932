// Micro-benchmarks of the multifd per-page codecs: every zero-page variant
// this CPU runs (on zero pages, where the whole page is read, and on random
// pages, where the first bytes decide), and zstd level 1 on one 128-page
// packet of text-like and of random pages.
// Run: build/perf/multifd_micro_bench   (bytes/s per case; "ratio" = raw /
// compressed for zstd)
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/ram_block.h"
#include "multifd/packet.h"
#include "multifd/zero_detect.h"
#include "multifd/zstd_codec.h"

namespace ferry::multifd {
namespace {

// 16 MiB of pages: larger than L2, so the zero-page numbers include memory
// bandwidth the way a sender thread sees it.
constexpr size_t kZeroRam = 16 << 20;
constexpr size_t kZeroPages = kZeroRam / kPageSize;

struct Ram {
  explicit Ram(size_t size) : size(size) {
    mem = static_cast<uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    std::memset(mem, 0, size);  // fault the pages in
  }
  ~Ram() { munmap(mem, size); }
  size_t size;
  uint8_t* mem;
};

void FillRandom(uint8_t* p, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
}

// Text-like pages: words from a vocabulary, like logs or source in a guest.
void FillText(uint8_t* p, size_t n, uint64_t seed) {
  static const char* const kWords[] = {"guest", "memory", "page",   "dirty", "migration", "channel",  "packet",
                                       "the",   "of",     "and",    "to",    "zstd",      "offset",   "block",
                                       "sync",  "round",  "source", "dest",  "bandwidth", "downtime", "kernel",
                                       "error", "struct", "return", "int",   "static",    "const",    "void"};
  std::mt19937_64 rng(seed);
  size_t i = 0;
  while (i < n) {
    const char* w = kWords[rng() % std::size(kWords)];
    for (const char* c = w; *c && i < n; ++c) p[i++] = static_cast<uint8_t>(*c);
    if (i < n) p[i++] = (rng() % 12 == 0) ? '\n' : ' ';
  }
}

Ram& ZeroRam() {
  static Ram r(kZeroRam);
  return r;
}

Ram& RandomRam() {
  static Ram r(kZeroRam);
  static const bool filled = (FillRandom(r.mem, r.size, 1), true);
  (void)filled;
  return r;
}

void BM_IsZero(benchmark::State& state, ZeroCheck z, bool random) {
  Ram& ram = random ? RandomRam() : ZeroRam();
  size_t page = 0;
  size_t zeros = 0;
  for (auto _ : state) {
    zeros += z.is_zero(ram.mem + page * kPageSize);
    page = page + 1 == kZeroPages ? 0 : page + 1;
  }
  benchmark::DoNotOptimize(zeros);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kPageSize));
  if (zeros != (random ? 0 : size_t(state.iterations()))) state.SkipWithError("wrong answer");
}

enum class Content { kText, kRandom };

struct Packet {
  Packet(Content c, uint64_t seed) : data(kPagesPerPacket * kPageSize), ptrs(kPagesPerPacket) {
    for (uint32_t i = 0; i < kPagesPerPacket; ++i) {
      ptrs[i] = data.data() + size_t{i} * kPageSize;
      if (c == Content::kText) {
        FillText(ptrs[i], kPageSize, seed * 1000 + i);
      } else {
        FillRandom(ptrs[i], kPageSize, seed * 1000 + i);
      }
    }
  }
  std::vector<uint8_t> data;
  std::vector<uint8_t*> ptrs;
};

// On one persistent stream the same packet again would turn into
// back-references; so iterations cycle through a ring of different packets,
// larger than zstd's window (level 1: 512 KiB).
constexpr int kRing = 4;

std::vector<Packet> MakeRing(Content c) {
  std::vector<Packet> ring;
  for (int k = 0; k < kRing; ++k) ring.emplace_back(c, k + 1);
  return ring;
}

void BM_ZstdCompress(benchmark::State& state, Content c) {
  std::vector<Packet> ring = MakeRing(c);
  ZstdCompressor comp(1);
  std::vector<uint8_t> out(MaxCompressedSize(kPagesPerPacket));
  size_t raw = 0, wire = 0;
  int k = 0;
  for (auto _ : state) {
    Result<size_t> n = comp.CompressPages(ring[k].ptrs.data(), kPagesPerPacket, out.data(), out.size());
    if (!n.ok()) {
      state.SkipWithError(n.status().ToString().c_str());
      break;
    }
    raw += kPagesPerPacket * kPageSize;
    wire += *n;
    k = (k + 1) % kRing;
  }
  state.SetBytesProcessed(int64_t(raw));
  state.counters["ratio"] = wire ? double(raw) / double(wire) : 0;
}

void BM_ZstdDecompress(benchmark::State& state, Content c) {
  std::vector<Packet> ring = MakeRing(c);
  // Compress the ring once per pass on a stream; decompress the same
  // sequence with one persistent decompressor. A full pass must be decoded
  // in order, so the compressed packets of a few passes are kept.
  constexpr int kPasses = 8;
  ZstdCompressor comp(1);
  std::vector<std::vector<uint8_t>> wire;
  size_t wire_bytes = 0;
  for (int p = 0; p < kPasses; ++p) {
    for (int k = 0; k < kRing; ++k) {
      std::vector<uint8_t> out(MaxCompressedSize(kPagesPerPacket));
      Result<size_t> n = comp.CompressPages(ring[k].ptrs.data(), kPagesPerPacket, out.data(), out.size());
      if (!n.ok()) {
        state.SkipWithError(n.status().ToString().c_str());
        return;
      }
      out.resize(*n);
      wire_bytes += *n;
      wire.push_back(std::move(out));
    }
  }
  Packet dst(Content::kRandom, 99);
  auto decomp = std::make_unique<ZstdDecompressor>();
  size_t i = 0;
  size_t raw = 0;
  for (auto _ : state) {
    if (i == wire.size()) {
      // Out of recorded packets: a new decompressor starts the stream over.
      state.PauseTiming();
      decomp = std::make_unique<ZstdDecompressor>();
      i = 0;
      state.ResumeTiming();
    }
    Status st = decomp->DecompressPages(wire[i].data(), wire[i].size(), dst.ptrs.data(), kPagesPerPacket);
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      break;
    }
    ++i;
    raw += kPagesPerPacket * kPageSize;
  }
  state.SetBytesProcessed(int64_t(raw));
  state.counters["ratio"] = double(wire.size() * kPagesPerPacket * kPageSize) / double(wire_bytes);
}

int RegisterAll() {
  for (const ZeroCheck& z : AvailableZeroChecks()) {
    const std::string name(z.name);
    benchmark::RegisterBenchmark(("BM_IsZero/" + name + "/zero_pages").c_str(), BM_IsZero, z, false);
    benchmark::RegisterBenchmark(("BM_IsZero/" + name + "/random_pages").c_str(), BM_IsZero, z, true);
  }
  benchmark::RegisterBenchmark("BM_ZstdCompress/level1/text_128_pages", BM_ZstdCompress, Content::kText);
  benchmark::RegisterBenchmark("BM_ZstdCompress/level1/random_128_pages", BM_ZstdCompress, Content::kRandom);
  benchmark::RegisterBenchmark("BM_ZstdDecompress/level1/text_128_pages", BM_ZstdDecompress, Content::kText);
  benchmark::RegisterBenchmark("BM_ZstdDecompress/level1/random_128_pages", BM_ZstdDecompress, Content::kRandom);
  return 0;
}

[[maybe_unused]] const int registered = RegisterAll();

}  // namespace
}  // namespace ferry::multifd

BENCHMARK_MAIN();
