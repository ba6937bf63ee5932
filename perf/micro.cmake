find_package(benchmark REQUIRED)
add_executable(micro_bench micro_bench.cc)
target_link_libraries(micro_bench PRIVATE ferry_core benchmark::benchmark)
