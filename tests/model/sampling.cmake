# Sampling: greedy, temperature, top-k / top-p / min-p, penalties, seeds, logprobs, validation.
deepshard_add_test(sampling_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/sampling_test.cc DEPS deepshard::sampling)
