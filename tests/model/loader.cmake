# Checkpoint loading, make-model and inspect (model/safetensors, checkpoint, make_model, inspect).
# Test data: testdata/golden/{tiny-bf16,small-fp8}. The CLI tests run bin/deepshard and skip when it
# has not been built.
deepshard_add_test(loader_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/safetensors_test.cc ${CMAKE_CURRENT_LIST_DIR}/checkpoint_test.cc
          ${CMAKE_CURRENT_LIST_DIR}/make_model_test.cc ${CMAKE_CURRENT_LIST_DIR}/inspect_test.cc
          ${CMAKE_CURRENT_LIST_DIR}/mtp_test.cc ${CMAKE_CURRENT_LIST_DIR}/head_fp8_test.cc
  DEPS deepshard::model deepshard_test_util nlohmann_json::nlohmann_json)
target_compile_definitions(loader_test PRIVATE DS_TEST_FALLBACK_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
                                               DS_TEST_FALLBACK_BINARY_DIR="${CMAKE_BINARY_DIR}")
