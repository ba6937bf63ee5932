# ferry <-> QEMU (qemu-system-x86_64) over tcp, unix, exec: pipes and stream
# files, against QEMU 7.2 and 10.0 (see ferry_interop_test).
ferry_interop_test(interop_test interop_test.cc LIBS ferry_test_support)
