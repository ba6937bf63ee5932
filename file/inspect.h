// Walks a migration stream stored in a file without loading any memory:
// header, configuration (machine name and the subsections QEMU adds to it:
// capabilities, uuid, target page bits), every section with its byte offset,
// command sections (QEMU >= 10 sends SWITCHOVER_START) by name, the RAM block
// list, PAGE/ZERO record counts (page data skipped), mapped-ram block headers
// and their bitmaps, the verification section, EOF and the VM description.
// Device sections it has no built-in knowledge of (everything a QEMU pc/q35
// machine saves) are walked with the VM description QEMU puts after EOF: it
// is found from the end of the file, and its per-field sizes and subsection
// names say how many bytes each device's state takes.
// Separate from the loaders on purpose: it only reads (bounded, with pread)
// and stops at the first inconsistency, which it reports in `problem`.
//
//   FERRY_ASSIGN_OR_RETURN(InspectReport r, InspectFile("/var/vm.mig", 0));
//   std::cout << r.Verdict();   // "complete" or "INCOMPLETE: ..."
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace ferry {

// A device section, or a command section (type wire::kCommand): then `id`
// is the command number, `idstr` its name ("SWITCHOVER_START") and
// `command_len` the length of its payload.
struct InspectSection {
  uint8_t type = 0;         // wire::kSectionStart, ..., wire::kCommand
  uint32_t id = 0;
  std::string idstr;        // PART/END: taken from the START with the same id
  uint32_t instance = 0;    // START/FULL only
  uint32_t version = 0;     // START/FULL only
  uint64_t offset = 0;      // file offset of the section type byte
  // Bytes from the section type byte to the next section's type byte (footer
  // and, for mapped-ram, the page regions included); 0 if the walk stopped
  // inside this section.
  uint64_t size = 0;
  uint64_t page_records = 0;
  uint64_t zero_records = 0;
  bool from_vmdesc = false;   // walked with the VM description's field sizes
  uint32_t subsections = 0;   // subsections found in it (nested ones too)
  uint32_t command_len = 0;   // commands only
};

struct InspectBlock {
  std::string name;
  uint64_t size = 0;
  // With x-ignore-shared (named in the configuration's capabilities) each
  // block entry carries the guest address of its memory region.
  bool has_addr = false;
  uint64_t addr = 0;
  // mapped-ram only.
  bool mapped_ram = false;
  uint64_t header_offset = 0;
  uint32_t version = 0;
  uint64_t page_size = 0;
  uint64_t bitmap_offset = 0;
  uint64_t pages_offset = 0;
  uint64_t pages_present = 0;  // bits set in the bitmap
};

struct InspectReport {
  std::string path;
  uint64_t offset = 0;      // where the stream starts in the file
  uint64_t file_size = 0;
  bool header_ok = false;   // magic QEVM and version 3
  uint32_t magic = 0;
  uint32_t version = 0;
  bool has_configuration = false;
  std::string machine;
  // Subsections of the configuration, in stream order, by name
  // ("configuration/capabilities", ...), and what they hold.
  std::vector<std::string> configuration_subsections;
  bool has_capabilities = false;
  std::vector<std::string> capabilities;  // e.g. "mapped-ram", "x-ignore-shared"
  std::string uuid;                       // "12345678-9abc-...", "" when not sent
  uint32_t target_page_bits = 0;          // 0 when not sent
  std::vector<InspectSection> sections;
  std::vector<InspectBlock> blocks;
  bool mapped_ram = false;
  bool ram_setup = false;   // the block list was read
  bool ram_end = false;     // the "ram" END section (the last pages, guest paused) was read
  bool verify_present = false;
  bool eof_present = false;
  bool vmdesc_present = false;
  uint64_t vmdesc_offset = 0;  // file offset of the 0x06 byte (when present)
  uint64_t vmdesc_bytes = 0;
  uint64_t stream_end = 0;  // file offset where the walk stopped
  uint64_t trailing_bytes = 0;  // bytes after the VM description (a problem when not 0)
  std::string problem;      // the first inconsistency found (empty if none)

  bool complete() const { return Missing().empty(); }
  // What keeps the stream from being complete ("" when complete).
  std::string Missing() const;
  // "complete" or "INCOMPLETE: <what is missing>".
  std::string Verdict() const;
};

// Fails only when PATH cannot be opened or is not a regular file; everything
// about its contents goes into the report.
Result<InspectReport> InspectFile(const std::string& path, uint64_t offset);

}  // namespace ferry
