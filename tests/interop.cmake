# ferry <-> QEMU (qemu-system-x86_64) over tcp, unix and file streams.
# Skips itself when qemu-system-x86_64 is not installed.
ferry_test(interop_test interop interop_test.cc LIBS ferry_test_support)
