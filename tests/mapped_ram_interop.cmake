# mapped-ram files between ferry and QEMU (QEMU >= 9 only: 7.2 has no mapped-ram).
ferry_test(mapped_ram_interop_test interop mapped_ram_interop_test.cc LIBS ferry_test_support)
