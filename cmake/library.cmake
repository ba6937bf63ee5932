# libferry: one library, shared (libferry.so, with VERSION and SOVERSION)
# and static (libferry.a), made from the same objects; its public headers,
# an exported CMake package (ferry::ferry) and ferry.pc. docs/library.md says
# what is installed and how to consume it.
#
# Every library folder calls ferry_component() once from its CMakeLists.txt;
# the top-level CMakeLists.txt adds the folder with one add_subdirectory()
# line, then calls ferry_finish_library() after the last one.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# While the major version is 0 the ABI may change with every minor release:
# SOVERSION is MAJOR.MINOR (libferry.so.0.1); from 1.0 on it is MAJOR.
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(FERRY_SOVERSION "${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}")
else()
  set(FERRY_SOVERSION "${PROJECT_VERSION_MAJOR}")
endif()

# ferry/version.h, generated from the one version number (project(VERSION)).
set(FERRY_GENERATED_INCLUDE_DIR ${PROJECT_BINARY_DIR}/include)
configure_file(${PROJECT_SOURCE_DIR}/cmake/version.h.in ${FERRY_GENERATED_INCLUDE_DIR}/ferry/version.h @ONLY)

# All compiled sources of the library, position independent so that the shared
# and the static library link the same objects (each source compiles once).
add_library(ferry_objects OBJECT)
set_target_properties(ferry_objects PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_compile_features(ferry_objects PUBLIC cxx_std_20)
target_include_directories(ferry_objects PUBLIC
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}> $<BUILD_INTERFACE:${FERRY_GENERATED_INCLUDE_DIR}>)
target_link_libraries(ferry_objects PUBLIC Threads::Threads)

# ferry_public_headers(FOLDER header...): headers of FOLDER installed as
# include/ferry/FOLDER/header. Only these are installed; every other header is
# private. A public header includes only standard headers and other public
# headers, by a path relative to itself ("status.h", "../core/channel.h"), so
# it compiles in the tree and for a consumer with -I<prefix>/include alike.
function(ferry_public_headers folder)
  foreach(h ${ARGN})
    install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/${h}
            DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/ferry/${folder} COMPONENT devel)
    set_property(GLOBAL APPEND PROPERTY FERRY_PUBLIC_HEADERS ${folder}/${h})
  endforeach()
endfunction()

# ferry_component(FOLDER SOURCES src... [PUBLIC_HEADERS h...]
#                 [PKG_DEPS pkg-config-module...] [COMPILE_DEPS target...])
#   SOURCES         compiled into libferry
#   PUBLIC_HEADERS  installed (see ferry_public_headers)
#   PKG_DEPS        libraries the sources link (found with pkg-config); private
#                   to libferry.so, linked by static consumers (Requires.private
#                   in ferry.pc, the static target's link interface)
#   COMPILE_DEPS    header-only targets the sources compile with (nlohmann_json)
function(ferry_component folder)
  cmake_parse_arguments(FC "" "" "SOURCES;PUBLIC_HEADERS;PKG_DEPS;COMPILE_DEPS" ${ARGN})
  target_sources(ferry_objects PRIVATE ${FC_SOURCES})
  ferry_public_headers(${folder} ${FC_PUBLIC_HEADERS})
  foreach(module ${FC_PKG_DEPS})
    _ferry_pkg_dep(${module})
  endforeach()
  if(FC_COMPILE_DEPS)
    target_link_libraries(ferry_objects PRIVATE ${FC_COMPILE_DEPS})
  endif()
endfunction()

# PkgConfig::ferry_dep_<module>, once, visible everywhere.
function(_ferry_pkg_dep module)
  string(MAKE_C_IDENTIFIER "ferry_dep_${module}" prefix)
  if(NOT TARGET PkgConfig::${prefix})
    pkg_check_modules(${prefix} REQUIRED IMPORTED_TARGET GLOBAL ${module})
    target_link_libraries(ferry_objects PRIVATE PkgConfig::${prefix})
    set_property(GLOBAL APPEND PROPERTY FERRY_PKG_DEPS ${module})
  endif()
endfunction()

function(ferry_finish_library)
  get_property(pkg_deps GLOBAL PROPERTY FERRY_PKG_DEPS)
  set(dep_targets "")
  foreach(module ${pkg_deps})
    string(MAKE_C_IDENTIFIER "ferry_dep_${module}" prefix)
    list(APPEND dep_targets PkgConfig::${prefix})
  endforeach()

  add_library(ferry_shared SHARED $<TARGET_OBJECTS:ferry_objects>)
  add_library(ferry_static STATIC $<TARGET_OBJECTS:ferry_objects>)
  set_target_properties(ferry_shared PROPERTIES OUTPUT_NAME ferry EXPORT_NAME shared
                        VERSION ${PROJECT_VERSION} SOVERSION ${FERRY_SOVERSION})
  set_target_properties(ferry_static PROPERTIES OUTPUT_NAME ferry EXPORT_NAME static)
  foreach(t ferry_shared ferry_static)
    target_compile_features(${t} PUBLIC cxx_std_20)
    target_include_directories(${t} PUBLIC
      $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}> $<BUILD_INTERFACE:${FERRY_GENERATED_INCLUDE_DIR}>
      $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
    target_link_libraries(${t} PUBLIC Threads::Threads PRIVATE ${dep_targets})
  endforeach()

  # In the tree everything links the static library (the old per-folder
  # library names stay, as aliases of the whole library).
  foreach(old ferry_core ferry_socket ferry_multifd ferry_file ferry_transports)
    add_library(${old} INTERFACE)
    target_link_libraries(${old} INTERFACE ferry_static)
  endforeach()

  install(TARGETS ferry_shared ferry_static EXPORT ferry-targets
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime NAMELINK_COMPONENT devel
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT devel)
  install(FILES ${FERRY_GENERATED_INCLUDE_DIR}/ferry/version.h
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/ferry COMPONENT devel)

  set(cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/ferry)
  install(EXPORT ferry-targets NAMESPACE ferry:: DESTINATION ${cmake_dir} COMPONENT devel)
  set(FERRY_CONFIG_PKG_DEPS "${pkg_deps}")
  configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/ferry-config.cmake.in
    ${PROJECT_BINARY_DIR}/ferry-config.cmake INSTALL_DESTINATION ${cmake_dir})
  # 0.x: a minor release may break the API, so only the same MAJOR.MINOR matches.
  if(PROJECT_VERSION_MAJOR EQUAL 0)
    set(compat SameMinorVersion)
  else()
    set(compat SameMajorVersion)
  endif()
  write_basic_package_version_file(${PROJECT_BINARY_DIR}/ferry-config-version.cmake
    VERSION ${PROJECT_VERSION} COMPATIBILITY ${compat})
  install(FILES ${PROJECT_BINARY_DIR}/ferry-config.cmake ${PROJECT_BINARY_DIR}/ferry-config-version.cmake
          DESTINATION ${cmake_dir} COMPONENT devel)

  # ferry.pc: relocatable (paths relative to the .pc file's own folder).
  file(RELATIVE_PATH pc_to_prefix /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
  string(REGEX REPLACE "/$" "" pc_to_prefix "${pc_to_prefix}")
  list(JOIN pkg_deps " " FERRY_PC_REQUIRES_PRIVATE)
  set(FERRY_PC_PREFIX "\${pcfiledir}/${pc_to_prefix}")
  configure_file(${PROJECT_SOURCE_DIR}/cmake/ferry.pc.in ${PROJECT_BINARY_DIR}/ferry.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/ferry.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
          COMPONENT devel)
endfunction()
