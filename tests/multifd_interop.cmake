# multifd between ferry and QEMU 7.2 (qemu-system-x86_64), both directions,
# 2 and 4 channels, with and without zstd. Skips itself without QEMU.
ferry_test(multifd_interop_test interop multifd_interop_test.cc LIBS ferry_test_support)
