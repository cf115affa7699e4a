# deepshard_add_component(name SOURCES ... [PUBLIC deps...] [PRIVATE deps...])
#   -> static library deepshard_<name> plus alias deepshard::<name>, built with DS_WARNINGS.
# deepshard_add_test(name SOURCES ... [DEPS ...] [LABELS ...] [NP n] [TIMEOUT s])
#   -> GoogleTest executable; with NP > 1 the whole binary runs under mpirun as one ctest test.
# -Werror only where asked (DEEPSHARD_WERROR, on in .ci/run): a newer or older compiler's false
# positive must not break a user's build, while CI still keeps the tree warning-free.
set(DS_WARNINGS -Wall -Wextra -Wno-missing-field-initializers)
# GCC 12 (Debian 12's compiler) inlines libstdc++'s std::string assign/insert at -O3 and then warns
# about impossible memcpy overlaps (-Wrestrict false positive, GCC PR 105651, fixed in GCC 13): it
# fires on code as plain as `name = "m";` or `"," + std::to_string(i)`, so no call-site rewrite can
# keep it away. Off for that compiler only; GCC 13+ and clang keep the warning.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12
   AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  list(APPEND DS_WARNINGS -Wno-restrict)
endif()
if(DEEPSHARD_WERROR)
  list(APPEND DS_WARNINGS -Werror)
endif()

function(deepshard_add_component name)
  cmake_parse_arguments(A "" "" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  add_library(deepshard_${name} STATIC ${A_SOURCES})
  add_library(deepshard::${name} ALIAS deepshard_${name})
  target_include_directories(deepshard_${name} PUBLIC ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/gen)
  target_compile_options(deepshard_${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${DS_WARNINGS}>)
  if(A_PUBLIC)
    target_link_libraries(deepshard_${name} PUBLIC ${A_PUBLIC})
  endif()
  if(A_PRIVATE)
    target_link_libraries(deepshard_${name} PRIVATE ${A_PRIVATE})
  endif()
endfunction()

function(deepshard_add_executable name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${DS_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
endfunction()

set(DS_MPIRUN_FLAGS --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp
    --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)

function(deepshard_add_test name)
  cmake_parse_arguments(A "" "NP;TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${A_SOURCES} ${CMAKE_SOURCE_DIR}/tests/util/test_env.cc)
  target_compile_options(${name} PRIVATE ${DS_WARNINGS})
  target_compile_definitions(${name} PRIVATE DS_TEST_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
                                             DS_TEST_BINARY_DIR="${CMAKE_BINARY_DIR}")
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest GTest::gtest_main)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 600)
  endif()
  if(NOT A_LABELS)
    set(A_LABELS unit)
  endif()
  set(env "DS_SOURCE_DIR=${CMAKE_SOURCE_DIR};DS_BINARY_DIR=${CMAKE_BINARY_DIR};OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
  if(A_NP AND A_NP GREATER 1)
    add_test(NAME ${name} COMMAND ${MPIEXEC_EXECUTABLE} -np ${A_NP} ${DS_MPIRUN_FLAGS} $<TARGET_FILE:${name}>)
    set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT} ENVIRONMENT "${env}"
                         PROCESSORS 2)
  else()
    include(GoogleTest)
    # NO_PRETTY_VALUES: ctest names are the gtest names (every parameterized suite has a name
    # generator); without it CMake appends "# GetParam() = <raw bytes of the parameter>" to them.
    gtest_discover_tests(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT} ENVIRONMENT "${env}"
                         DISCOVERY_TIMEOUT 60 NO_PRETTY_VALUES)
  endif()
endfunction()
