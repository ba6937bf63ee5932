# The consumer test (ctest -R consumer): installs the build into a fresh
# prefix, checks that every installed header compiles on its own with only
# -I<prefix>/include, then builds example.cc against the installed libferry
# three ways and runs each: CMake find_package (shared), CMake find_package
# with FERRY_USE_STATIC (static), and plain c++ with pkg-config (shared).
#
#   cmake -DBUILD_DIR=... -DSOURCE_DIR=... -DCXX=... [-DEXTRA_FLAGS=...] -P run.cmake
foreach(v BUILD_DIR SOURCE_DIR CXX)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run.cmake needs -D${v}=...")
  endif()
endforeach()
separate_arguments(extra UNIX_COMMAND "${EXTRA_FLAGS}")

set(work ${BUILD_DIR}/consumer-test)
set(prefix ${work}/prefix)
file(REMOVE_RECURSE ${work})
file(MAKE_DIRECTORY ${work})

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

run("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})

# Every installed header alone, with nothing but the prefix's include dir.
file(GLOB_RECURSE headers RELATIVE ${prefix}/include ${prefix}/include/*.h)
list(LENGTH headers n)
if(n LESS 10)
  message(FATAL_ERROR "only ${n} headers installed under ${prefix}/include: ${headers}")
endif()
foreach(h ${headers})
  string(MAKE_C_IDENTIFIER "${h}" id)
  file(WRITE ${work}/headers/${id}.cc "#include <${h}>\n")
  run("compiling <${h}> alone" ${CXX} -std=c++20 -fsyntax-only -I${prefix}/include ${work}/headers/${id}.cc)
endforeach()
message(STATUS "${n} installed headers compile alone with -I${prefix}/include")
# Private headers stay private.
foreach(private core/wire.h core/verify.h multifd/zstd_codec.h file/inspect.h)
  if(EXISTS ${prefix}/include/ferry/${private})
    message(FATAL_ERROR "private header ${private} was installed")
  endif()
endforeach()

# 1, 2: CMake find_package(ferry), shared then static.
foreach(kind shared static)
  set(opts "")
  if(kind STREQUAL "static")
    set(opts -DFERRY_USE_STATIC=ON)
  endif()
  run("configuring the find_package consumer (${kind})" ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer
      -B ${work}/cmake-${kind} -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX}
      "-DCMAKE_CXX_FLAGS=${EXTRA_FLAGS}" ${opts})
  run("building the find_package consumer (${kind})" ${CMAKE_COMMAND} --build ${work}/cmake-${kind})
  run("objdump" objdump -p ${work}/cmake-${kind}/example)
  string(FIND "${out}" "libferry.so" dynamic)
  if(kind STREQUAL "static" AND NOT dynamic EQUAL -1)
    message(FATAL_ERROR "the static consumer needs libferry.so:\n${out}")
  elseif(kind STREQUAL "shared" AND dynamic EQUAL -1)
    message(FATAL_ERROR "the shared consumer does not link libferry.so:\n${out}")
  endif()
  run("running the find_package consumer (${kind})" ${work}/cmake-${kind}/example)
  string(STRIP "${out}" out)
  message(STATUS "find_package(ferry), ${kind}: ${out}")
endforeach()

# 3: plain c++ $(pkg-config --cflags --libs ferry).
set(ENV{PKG_CONFIG_PATH} ${prefix}/lib/pkgconfig)
run("pkg-config" pkg-config --cflags --libs ferry)
string(STRIP "${out}" pc_flags)
separate_arguments(pc_args UNIX_COMMAND "${pc_flags}")
run("building the pkg-config consumer" ${CXX} -std=c++20 ${extra} -o ${work}/example-pkgconfig
    ${SOURCE_DIR}/tests/consumer/example.cc ${pc_args} -Wl,-rpath,${prefix}/lib)
run("running the pkg-config consumer" ${work}/example-pkgconfig)
string(STRIP "${out}" out)
message(STATUS "c++ $(pkg-config --cflags --libs ferry) [${pc_flags}]: ${out}")

# One version everywhere: ferry.pc, the installed ferry --version, the library.
run("pkg-config --modversion" pkg-config --modversion ferry)
string(STRIP "${out}" pc_version)
run("ferry --version" ${prefix}/bin/ferry --version)
string(STRIP "${out}" cli_version)
if(NOT cli_version STREQUAL "ferry ${pc_version}")
  message(FATAL_ERROR "ferry --version says '${cli_version}', ferry.pc says ${pc_version}")
endif()
foreach(kind shared static)
  run("running the ${kind} consumer" ${work}/cmake-${kind}/example)
  if(NOT out MATCHES "^ferry ${pc_version}: ")
    message(FATAL_ERROR "the ${kind} consumer reports another version than ferry.pc (${pc_version}): ${out}")
  endif()
endforeach()
message(STATUS "version ${pc_version}: ferry.pc, ferry --version and ferry::Version() agree")

# README's embedding example is this program, verbatim.
file(READ ${SOURCE_DIR}/tests/consumer/example.cc example_text)
file(READ ${SOURCE_DIR}/README.md readme_text)
string(FIND "${readme_text}" "${example_text}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md's embedding example is not tests/consumer/example.cc verbatim")
endif()
