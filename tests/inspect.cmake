# `ferry inspect` walking device sections with the VM description after EOF.
# One source, two suites: hand-built streams (unit) and files QEMU saves from
# pc/q35 machines (interop, against QEMU 7.2 and 10.0).
ferry_test(inspect_test unit inspect_test.cc LIBS ferry_file ferry_test_support)
target_compile_definitions(inspect_test PRIVATE FERRY_INSPECT_UNIT)
ferry_interop_test(inspect_interop_test inspect_test.cc LIBS ferry_test_support)
target_compile_definitions(inspect_interop_test PRIVATE FERRY_INSPECT_INTEROP)
# The interop suite also reads the configuration the CLI does not print.
target_link_libraries(inspect_interop_test PRIVATE ferry_file)
