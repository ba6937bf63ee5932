# rdma/ (issue 12): codec and registration-cache unit tests on the host.
ferry_test(rdma_codec_test unit rdma_codec_test.cc LIBS ferry_core)
ferry_test(rdma_host_test unit rdma_host_test.cc LIBS ferry_core)

# The soft-RoCE VM (tests/rdma/vm.sh): Debian's kernel with rdma_rxe under
# QEMU TCG, QEMU 7.2 and ferry inside. About 20-60 s each on 2 cores.
add_test(NAME rdma/vm_smoke COMMAND ${PROJECT_SOURCE_DIR}/tests/rdma/ctest.sh smoke)
# A client announcing protocol version 2 (the destination must refuse it).
add_executable(rdma_version_client rdma/version_client.cc)
target_link_libraries(rdma_version_client PRIVATE ferry_core)
add_test(NAME rdma/qemu7.2_to_ferry
         COMMAND ${PROJECT_SOURCE_DIR}/tests/rdma/ctest.sh ferry $<TARGET_FILE:ferry>
                 ${PROJECT_SOURCE_DIR}/tests/rdma/qemu-to-ferry $<TARGET_FILE:rdma_version_client>)
add_test(NAME rdma/ferry_send
         COMMAND ${PROJECT_SOURCE_DIR}/tests/rdma/ctest.sh ferry $<TARGET_FILE:ferry>
                 ${PROJECT_SOURCE_DIR}/tests/rdma/ferry-send)
# QEMU 10.0 (FERRY_QEMU10_ROOT, tests/CMakeLists.txt) in the VM, both
# directions, dynamic and pin-all; its binary goes into the payload as
# qemu10-system-x86_64 (the base image's qemu-system-x86_64 is 7.2).
add_test(NAME rdma/qemu10.0
         COMMAND ${PROJECT_SOURCE_DIR}/tests/rdma/ctest.sh ferry $<TARGET_FILE:ferry>
                 ${PROJECT_SOURCE_DIR}/tests/rdma/qemu10
                 qemu10-system-x86_64=${FERRY_QEMU10_ROOT}/usr/bin/qemu-system-x86_64)

# Failure cases in the VM (tests/rdma/failures): connection refused, the
# destination killed or SIGINT mid-migration, a remote access error (a fake
# destination answering wrong memory keys), rdma:[IPv6]:PORT.
add_executable(rdma_bad_rkey_dest rdma/bad_rkey_dest.cc)
target_link_libraries(rdma_bad_rkey_dest PRIVATE ferry_core)
add_test(NAME rdma/failures
         COMMAND ${PROJECT_SOURCE_DIR}/tests/rdma/ctest.sh ferry $<TARGET_FILE:ferry>
                 ${PROJECT_SOURCE_DIR}/tests/rdma/failures $<TARGET_FILE:rdma_bad_rkey_dest>)
# multifd over rdma, ferry <-> ferry (docs/rdma-multifd.md).
add_test(NAME rdma/multifd
         COMMAND ${PROJECT_SOURCE_DIR}/tests/rdma/ctest.sh ferry $<TARGET_FILE:ferry>
                 ${PROJECT_SOURCE_DIR}/tests/rdma/multifd)

# Each VM test boots a TCG guest (30-110 s on 2 cores): labelled slow, so the
# sanitizer pass of .ci/run and a quick local loop (-LE slow) leave them out;
# the release pass runs them every time.
set_tests_properties(rdma/vm_smoke rdma/qemu7.2_to_ferry rdma/ferry_send rdma/qemu10.0 rdma/failures
                     rdma/multifd PROPERTIES
  LABELS "rdma;integration;slow" TIMEOUT 900 SKIP_RETURN_CODE 77 RUN_SERIAL ON)
