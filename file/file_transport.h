// The file transport's registration (transports/transports.cc): file:PATH
// [,offset=N] endpoints — a regular file (plain stream from an offset, or
// QEMU's mapped-ram layout) or a FIFO (a one-way stream, like a pipe) — and
// the settings it owns: capability mapped-ram, parameter direct-io. With
// multifd and mapped-ram, multifd-channels is the number of file threads
// (reported as such, never as multifd channels). A save is complete only
// after Connection::Finish (fdatasync, timed as the file's sync time).
#pragma once

#include <memory>

#include "core/setup.h"

namespace ferry {

std::unique_ptr<Transport> MakeFileTransport();

}  // namespace ferry
