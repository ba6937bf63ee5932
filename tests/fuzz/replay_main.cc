// main() for a fuzz target outside libFuzzer: feeds it every file named on
// the command line, and every file in every directory named (sorted, not
// recursive), once each. The regression tests of the normal build run the
// targets this way over their seed corpus and the crash reproducers of
// tests/fuzz/regressions/, under whatever sanitizers the build has.
// A target that crashes takes the program with it; the name of the input
// being run is printed first so the log says which one.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

bool RunFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", p.c_str());
    return false;
  }
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::fprintf(stderr, "replay: %s (%zu bytes)\n", p.c_str(), data.size());
  // A copy of exactly the input's size, as libFuzzer passes it, so that a
  // read past its end is caught.
  std::vector<uint8_t> exact(data);
  LLVMFuzzerTestOneInput(exact.data(), exact.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
    return 2;
  }
  size_t runs = 0;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path p(argv[i]);
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::directory_iterator(p)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
      for (const auto& f : files) {
        ok = RunFile(f) && ok;
        ++runs;
      }
    } else if (std::filesystem::exists(p, ec)) {
      ok = RunFile(p) && ok;
      ++runs;
    } else {
      std::fprintf(stderr, "replay: %s does not exist\n", argv[i]);
      ok = false;
    }
  }
  std::fprintf(stderr, "replay: %zu inputs run\n", runs);
  return ok ? 0 : 1;
}
