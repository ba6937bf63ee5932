# Support code for the suites that drive the real ferry binary and QEMU
# (tests/support/). Named 00-* so it is included before the fragments that
# link it (fragments are included in alphabetical order).
find_package(nlohmann_json 3 REQUIRED)
find_package(OpenSSL 3 REQUIRED)

add_library(ferry_test_support STATIC
  support/process.cc
  support/files.cc
  support/pattern.cc
  support/compare.cc
  support/qemu.cc
  support/qmp.cc
  support/tls_creds.cc
)
target_link_libraries(ferry_test_support PUBLIC ferry_core nlohmann_json::nlohmann_json GTest::gtest
                      PRIVATE OpenSSL::SSL OpenSSL::Crypto)
target_include_directories(ferry_test_support PUBLIC ${PROJECT_SOURCE_DIR})
