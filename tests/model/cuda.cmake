# The CUDA engine end to end (golden sets with --device cuda, graphs, sub-steps, device sampling).
# Built where the engine is; its GPU tests skip visibly without a device.
if(TARGET deepshard_model_cuda)
  deepshard_add_test(golden_cuda_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/golden_cuda_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/routing_judge.cc
    DEPS deepshard::model deepshard::model_cuda LABELS gpu)
endif()
