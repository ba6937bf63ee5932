// Fuzz target: `ferry inspect`'s walker over a whole file — header,
// configuration and its subsections (known ones, and unknown ones walked by
// the VM description), command sections, device sections (timer,
// globalstate, ferry's verification, and any other walked by the VM
// description's field sizes and subsections), RAM records and block lists,
// mapped-ram headers and bitmaps, EOF, and the VM description found from the
// end of the file.
//
// Input: the file (seeds: QEMU 7.2 and 10.0 streams of -M none, pc and q35
// guests, and ferry's saves).
#include <cstdint>

#include "file/inspect.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  static fuzz::InputFile* file = new fuzz::InputFile();
  file->SetContents(data, size);
  Result<InspectReport> r = InspectFile(file->path(), 0);
  if (r.ok()) {
    fuzz::Report(("inspect: " + r->Verdict()).c_str(), Status::Ok());
    // Starting inside the file: the walk must hold up wherever it starts.
    Result<InspectReport> shifted = InspectFile(file->path(), size / 2);
    if (shifted.ok()) (void)shifted->Verdict();
  }
  return 0;
}
