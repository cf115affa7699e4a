# Tokenizer, chat template and the `deepshard tokenize` command (the CLI test skips when bin/deepshard
# has not been built). Test data: testdata/tokenizer/ (the real DeepSeek-V3 tokenizer files).
deepshard_add_test(tokenizer_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/tokenizer_test.cc ${CMAKE_CURRENT_LIST_DIR}/chat_template_test.cc
  DEPS deepshard::tokenizer nlohmann_json::nlohmann_json)
# Lets the test binary also run directly (outside ctest, which sets DS_SOURCE_DIR / DS_BINARY_DIR).
target_compile_definitions(tokenizer_test PRIVATE DS_TEST_FALLBACK_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
                                                  DS_TEST_FALLBACK_BINARY_DIR="${CMAKE_BINARY_DIR}")
