# multifd between ferry and QEMU (qemu-system-x86_64), both directions,
# channels 1/3/8 x none/zstd x zero-page-detection multifd/legacy, against
# QEMU 7.2 and 10.0.
ferry_interop_test(multifd_interop_test multifd_interop_test.cc LIBS ferry_test_support)
