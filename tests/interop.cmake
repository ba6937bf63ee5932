# ferry <-> QEMU (qemu-system-x86_64) over tcp, unix, exec: pipes and stream
# files, against QEMU 7.2 and 10.0 (see ferry_interop_test).
ferry_interop_test(interop_test interop_test.cc LIBS ferry_test_support)
# QEMU's return path, validate-uuid both ways, postcopy refused.
ferry_interop_test(qemu_stream_interop_test qemu_stream_interop_test.cc LIBS ferry_test_support)
