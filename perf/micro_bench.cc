// Micro-benchmarks of the per-page hot paths: zero-page test, page hashing
// for verification, encoding page records, decoding them into guest memory.
// Run: build/perf/micro_bench   (prints bytes/s per case)
#include <benchmark/benchmark.h>
#include <sys/mman.h>
#include <xxhash.h>

#include <cstring>
#include <random>
#include <vector>

#include "core/ram_loader.h"
#include "core/ram_saver.h"
#include "core/stream.h"
#include "core/verify.h"
#include "core/zero_page.h"
#include "tests/memory_channel.h"

namespace ferry {
namespace {

constexpr size_t kRam = 64 << 20;

struct Ram {
  Ram() {
    mem = static_cast<uint8_t*>(mmap(nullptr, kRam, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  ~Ram() { munmap(mem, kRam); }
  void Random() {
    std::mt19937_64 rng(1);
    for (size_t i = 0; i < kRam; i += 8) {
      uint64_t v = rng();
      std::memcpy(mem + i, &v, 8);
    }
  }
  void Zero() { std::memset(mem, 0, kRam); }
  uint8_t* mem;
};

// Discards writes; counts bytes.
class NullChannel final : public Channel {
 public:
  Status WriteAll(std::span<iovec> iov) override {
    for (auto& v : iov) bytes += v.iov_len;
    return Status::Ok();
  }
  Result<size_t> ReadSome(void*, size_t) override { return size_t{0}; }
  void Shutdown() override {}
  std::string Describe() const override { return "null"; }
  uint64_t bytes = 0;
};

void BM_ZeroCheck(benchmark::State& state) {
  Ram ram;
  state.range(0) ? ram.Zero() : ram.Random();
  for (auto _ : state) {
    size_t zeros = 0;
    for (size_t o = 0; o < kRam; o += kPageSize) zeros += IsZeroPage(ram.mem + o);
    benchmark::DoNotOptimize(zeros);
  }
  state.SetBytesProcessed(state.iterations() * kRam);
  state.SetLabel(state.range(0) ? "zero pages" : "random pages");
}
BENCHMARK(BM_ZeroCheck)->Arg(0)->Arg(1);

// Arg 0: PageHash (the variant this CPU runs best); 1: libxxhash's own
// XXH3_64bits, built for baseline x86-64.
void BM_PageHash(benchmark::State& state) {
  Ram ram;
  ram.Random();
  const bool library = state.range(0) != 0;
  for (auto _ : state) {
    uint64_t acc = 0;
    for (size_t o = 0; o < kRam; o += kPageSize) {
      acc ^= library ? XXH3_64bits(ram.mem + o, kPageSize) : PageHash(ram.mem + o);
    }
    benchmark::DoNotOptimize(acc);
  }
  state.SetBytesProcessed(state.iterations() * kRam);
  state.SetLabel(library ? "libxxhash XXH3_64bits" : "PageHash");
}
BENCHMARK(BM_PageHash)->Arg(0)->Arg(1);

void BM_EncodePages(benchmark::State& state) {
  Ram ram;
  ram.Random();
  RamBlockList blocks;
  (void)blocks.Add("ram", ram.mem, kRam);
  for (auto _ : state) {
    NullChannel ch;
    StreamWriter w(&ch);
    StreamSink sink(w);
    RamSaver saver(blocks, w, sink, true);
    saver.MarkAllDirty();
    saver.BeginSection();
    while (!saver.SendSome(UINT64_MAX)) {
    }
    (void)saver.EndIterateSection(true);
    (void)w.Flush();
    benchmark::DoNotOptimize(ch.bytes);
  }
  state.SetBytesProcessed(state.iterations() * kRam);
}
BENCHMARK(BM_EncodePages);

void BM_DecodePages(benchmark::State& state) {
  Ram src, dst;
  src.Random();
  RamBlockList sb;
  (void)sb.Add("ram", src.mem, kRam);
  test::MemoryChannel enc;
  {
    StreamWriter w(&enc);
    StreamSink sink(w);
    RamSaver saver(sb, w, sink, true);
    (void)saver.WriteSetup();
    saver.MarkAllDirty();
    saver.BeginSection();
    while (!saver.SendSome(UINT64_MAX)) {
    }
    (void)saver.EndIterateSection(true);
    (void)w.Flush();
  }
  RamBlockList db;
  (void)db.Add("ram", dst.mem, kRam);
  test::MemoryChannel in(enc.out());
  for (auto _ : state) {
    in.Rewind();
    StreamReader r(&in);
    RamLoader loader(db, nullptr, false);
    Status s = loader.Load(r, 4);  // setup
    s = loader.Load(r, 4);         // pages
    if (!s.ok()) state.SkipWithError(s.message().c_str());
  }
  state.SetBytesProcessed(state.iterations() * kRam);
}
BENCHMARK(BM_DecodePages);

}  // namespace
}  // namespace ferry

BENCHMARK_MAIN();
