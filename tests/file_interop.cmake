# ferry save/load <-> QEMU 7.2 through plain stream files (exec:cat).
# Skips itself when qemu-system-x86_64 is not installed.
ferry_test(file_interop_test interop file_interop_test.cc LIBS ferry_test_support)
