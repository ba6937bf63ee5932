# mapped-ram files between ferry and QEMU (QEMU >= 9 only: 7.2 has no mapped-ram).
ferry_interop_test(mapped_ram_interop_test QEMU10_ONLY mapped_ram_interop_test.cc LIBS ferry_test_support)
