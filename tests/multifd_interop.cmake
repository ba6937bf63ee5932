# multifd between ferry and QEMU (qemu-system-x86_64), both directions,
# 2 and 4 channels, with and without zstd, against QEMU 7.2 and 10.0.
ferry_interop_test(multifd_interop_test multifd_interop_test.cc LIBS ferry_test_support)
