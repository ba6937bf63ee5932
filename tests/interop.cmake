# ferry <-> QEMU (qemu-system-x86_64) over tcp, unix and file streams.
# Skips itself when qemu-system-x86_64 is not installed.
ferry_test(interop_test interop interop_test.cc LIBS ferry_test_support)
# QEMU's return path, validate-uuid both ways, postcopy refused (both QEMU generations).
ferry_test(qemu_stream_interop_test interop qemu_stream_interop_test.cc LIBS ferry_test_support)
