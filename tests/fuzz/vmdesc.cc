// Fuzz target: the VM description (the JSON QEMU puts after EOF) and
// `ferry inspect`'s walk of device sections by it: fields by size, arrays,
// nested structs, subsections present or not, versions, depth and bounds.
//
// Input: be32 n, then n bytes of sections (what follows the configuration
// section in a stream), then the JSON. The target writes a file: stream
// header, configuration "pc-i440fx-10.0", the sections, EOF, 0x06, be32
// length, the JSON — so that mutations land in the description and the
// device state rather than in the framing around them. Seeds: the device
// sections and VM descriptions of QEMU 7.2 and 10.0 pc and q35 streams
// (tests/fuzz/run.sh cuts them out of corpus/streams at run time).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "file/inspect.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  static fuzz::InputFile* file = new fuzz::InputFile();
  if (size < 4) return 0;
  uint64_t n = (uint64_t{data[0]} << 24) | (uint64_t{data[1]} << 16) | (uint64_t{data[2]} << 8) | data[3];
  n = std::min<uint64_t>(n, size - 4);
  const uint8_t* sections = data + 4;
  const uint8_t* json = sections + n;
  const size_t json_len = size - 4 - n;

  std::vector<uint8_t> f = {'Q', 'E', 'V', 'M', 0, 0, 0, 3, 0x07, 0, 0, 0, 14};
  const std::string machine = "pc-i440fx-10.0";
  f.insert(f.end(), machine.begin(), machine.end());
  f.insert(f.end(), sections, sections + n);
  f.push_back(0x00);
  f.push_back(0x06);
  for (int s = 24; s >= 0; s -= 8) f.push_back(static_cast<uint8_t>(json_len >> s));
  f.insert(f.end(), json, json + json_len);
  file->SetContents(f.data(), f.size());
  Result<InspectReport> r = InspectFile(file->path(), 0);
  if (r.ok()) fuzz::Report(("inspect: " + r->Verdict()).c_str(), Status::Ok());
  return 0;
}
